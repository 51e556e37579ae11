"""Checkpoint -> ONNX model, verified against PyTorch with onnxruntime on real images."""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
from annotated_types import Ge
from omegaconf import DictConfig

from cifar_lightning.errors import UserError
from cifar_lightning.module import ImageClassifier, plain
from cifar_lightning.runs import RunFolder
from cifar_lightning.tasks.evaluate import model_and_data
from cifar_lightning.validation import check_arguments


class RawImagesToLogits(torch.nn.Module):
    """The exported graph takes uint8 images as they are stored, so users need not know the normalisation, and
    gives logits divided by the calibration temperature (no test-time augmentation): their softmax is the
    calibrated probabilities."""

    def __init__(self, model: ImageClassifier):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.logits(images, tta=0, calibrated=True)


@dataclass
class ExportOptions:
    """The keys of configs/export.yaml (data is checked as what it builds)."""

    ckpt: str = "best"
    format: Annotated[Literal["onnx"], "is not supported: use onnx"] = "onnx"
    outputs: str = "outputs"
    output: str | None = None
    split: Annotated[Literal["test", "val"], "does not exist: use split=test or split=val"] = "test"
    check_images: Annotated[int, Ge(1), "must be a whole number of at least 1"] = 500
    tolerance: Annotated[float, Ge(0), "must be a number of at least 0"] = 1e-3
    trusted_modules: list[str] | None = None


def export(cfg: DictConfig) -> Path:
    """Writes the ONNX model (default <run>/model.onnx) once onnxruntime agrees with PyTorch on real images."""
    check_arguments(ExportOptions, {k: plain(v) for k, v in cfg.items() if k != "data"}, "")
    try:
        import onnxruntime
    except ImportError:
        raise UserError('onnxruntime is not installed: pip install -e ".[export]"') from None
    checkpoint, model, datamodule = model_and_data(cfg, cfg.split)
    out = Path(cfg.output) if cfg.output else RunFolder.of_checkpoint(checkpoint).export_file(cfg.format)
    images = datamodule.splits[cfg.split].images[: cfg.check_images]

    graph = RawImagesToLogits(model).eval()
    tmp = out.with_name(f".{out.name}.tmp")
    torch.onnx.export(
        graph,
        (images[:2],),
        str(tmp),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
        dynamo=False,
    )
    with torch.no_grad():
        expected = graph(images).numpy()
    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    got = session.run(["logits"], {"images": images.numpy()})[0]
    max_diff = float(abs(got - expected).max())
    agreement = float((got.argmax(1) == expected.argmax(1)).mean())
    print(
        f"checked on {len(images)} {cfg.split} images: max abs logit difference {max_diff:.2e}, "
        f"top-1 agreement {agreement:.2%}"
    )
    if max_diff > cfg.tolerance:
        tmp.unlink()
        raise UserError(
            f"the ONNX model disagrees with PyTorch: max abs logit difference {max_diff:.2e} > "
            f"tolerance={cfg.tolerance} (top-1 agreement {agreement:.2%}); nothing written"
        )
    tmp.replace(out)
    print(f"wrote {out}")
    return out
