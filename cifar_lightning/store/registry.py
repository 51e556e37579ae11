"""A run's model in MLflow's model registry: `python export.py ckpt=RUN format=mlflow registered_model=NAME`.

The model is an MLflow pyfunc model (`ClassifierModel`) whose one artifact is the checkpoint: loading it back with
`mlflow.pyfunc.load_model("models:/NAME@champion")` unpickles only a reference to `ClassifierModel` (this
package must be installed where it is loaded) and reads the checkpoint through checkpoints.load_model, the
trusted loader, so the weights run no code. Predictions go through `ImageClassifier.predict_logits`, as
predict.py's do. MLflow is optional (pip install -e '.[track]'): it is imported where a model is logged or
registered, and without it `ClassifierModel` is a plain class that nothing logs.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

try:
    from mlflow.pyfunc import PythonModel
except ImportError:  # only log() and register() need MLflow, and they import it
    PythonModel = object  # type: ignore[assignment,misc]

from cifar_lightning.blocks.errors import UserError, first_line
from cifar_lightning.blocks.module import ImageClassifier
from cifar_lightning.store.checkpoints import load_model

BATCH_SIZE = 256


class ClassifierModel(PythonModel):
    """A checkpoint as an MLflow pyfunc model.

    predict(images) takes uint8 images, 0..255, RGB, `image_size` pixels square (the checkpoint's, 32 for CIFAR),
    as a numpy array (N, H, W, 3) (how images are stored and decoded) or (N, 3, H, W) (torch's layout); an array
    that fits both (H = 3) is read as (N, 3, H, W). It returns a pandas DataFrame, one row per image: `class`,
    the top-1 class name, then one column per class name holding its calibrated probability (softmax(logits / T),
    with the checkpoint's own test-time augmentation), as predict.py computes them. Raises UserError for images
    of another type or shape.
    """

    model: ImageClassifier

    def load_context(self, context: Any) -> None:
        """Rebuilds the model from the logged checkpoint (context.artifacts["checkpoint"]) through the trusted
        loader, in eval mode on the CPU; the modules of one's own it may name are the registering call's
        trusted_modules (context.model_config)."""
        trusted = (context.model_config or {}).get("trusted_modules") or ()
        self.model = load_model(Path(context.artifacts["checkpoint"]), trusted)

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Top-1 class and class probabilities of `model_input` (see the class's docstring)."""
        images = as_nchw(np.asarray(model_input), int(self.model.hparams["image_size"]))
        logits = self.model.predict_logits(images, None, BATCH_SIZE, calibrated=True)
        probabilities = logits.softmax(dim=1).numpy()
        names = list(self.model.hparams["class_names"])
        frame = pd.DataFrame(probabilities, columns=names)
        frame.insert(0, "class", [names[i] for i in probabilities.argmax(axis=1)])
        return frame


def as_nchw(images: np.ndarray, size: int) -> torch.Tensor:
    """uint8 images (N, size, size, 3) or (N, 3, size, size) as a torch tensor (N, 3, size, size); UserError for
    anything else."""
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(
            f"images must be a uint8 array (N, {size}, {size}, 3) or (N, 3, {size}, {size}), not "
            f"{images.dtype} {images.shape}"
        )
    if images.shape[1:] == (3, size, size):
        return torch.from_numpy(np.ascontiguousarray(images))
    if images.shape[1:] == (size, size, 3):
        return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    raise UserError(f"images must be (N, {size}, {size}, 3) or (N, 3, {size}, {size}), not {images.shape}")


def log(
    checkpoint: Path, tracking_uri: str, run_id: str, example: np.ndarray, trusted_modules: Sequence[str] = ()
) -> str:
    """Logs `checkpoint` as the pyfunc model `model` of MLflow run `run_id` in `tracking_uri`, with `example`
    (a few uint8 images) as its input example and the modules of one's own its checkpoint may name; returns its
    URI (models:/<model id>). The requirements are given, not inferred: inferring them loads the model in another
    process."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    mlflow.set_tracking_uri(tracking_uri)
    # any N, either layout: as_nchw checks the rest
    signature = ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, -1))]))
    requirements = ["cifar-lightning", f"mlflow=={mlflow.__version__}", f"torch=={torch.__version__.split('+')[0]}"]
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ClassifierModel(),
            artifacts={"checkpoint": str(checkpoint)},
            model_config={"trusted_modules": list(trusted_modules)},
            signature=signature,
            input_example=example,
            pip_requirements=requirements,
        )
    return info.model_uri


def register(model_uri: str, tracking_uri: str, name: str, alias: str) -> str:
    """Registers the logged model `model_uri` as a new version of `name` and points `alias` at it; returns
    models:/<name>@<alias>. Raises UserError for a name or alias MLflow refuses."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    try:
        version = mlflow.register_model(model_uri, name)
        mlflow.MlflowClient(tracking_uri).set_registered_model_alias(name, alias, version.version)
    except mlflow.exceptions.MlflowException as e:
        raise UserError(f"MLflow refused registered_model={name} alias={alias}: {first_line(e)}") from None
    return f"models:/{name}@{alias}"
