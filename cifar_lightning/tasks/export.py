"""Checkpoint -> ONNX model, verified against PyTorch with onnxruntime on real images; or -> a model in MLflow's
registry (format=mlflow), verified the same way once loaded back through MLflow."""

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, cast

import torch
from annotated_types import Ge
from omegaconf import DictConfig, open_dict

from cifar_lightning.blocks.checks import check_arguments
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.ensemble import as_logits
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier, plain
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.store import registry, tracking
from cifar_lightning.store.locate import is_group
from cifar_lightning.store.outputs import output_file
from cifar_lightning.store.runs import RunFolder, write_atomic
from cifar_lightning.tasks.ensemble import calibrated_members, members_own, named_checkpoints
from cifar_lightning.tasks.evaluate import model_and_data


class RawImagesToLogits(torch.nn.Module):
    """The exported graph takes uint8 images as they are stored, so users need not know the normalisation, and
    gives logits whose softmax is the calibrated probabilities (no test-time augmentation): one run's logits divided
    by its temperature; an ensemble's log of the mean of its members' calibrated probabilities divided by the
    ensemble's `temperature` (tasks/ensemble.py, fitted at this TTA level)."""

    def __init__(self, models: list[ImageClassifier], temperature: float | None = None):
        super().__init__()
        self.models, self.temperature = torch.nn.ModuleList(models), temperature

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        each = [cast(ImageClassifier, m).logits(images, tta=0, calibrated=True) for m in self.models]
        if self.temperature is None:
            return each[0]
        # the mean as ensemble.average takes it, whose shape check the ONNX tracer cannot follow
        return as_logits(torch.stack([logits.softmax(1) for logits in each]).mean(0)) / self.temperature


@dataclass
class ExportOptions:
    """The keys of configs/export.yaml (data is checked as what it builds)."""

    ckpt: str | list[str] = "best"  # a list, or a sweep folder: an ensemble as one graph
    format: Annotated[Literal["onnx", "mlflow"], "is not supported: use onnx or mlflow"] = "onnx"
    outputs: str = "outputs"
    output: str | None = None
    split: Annotated[Literal["test", "val"], "does not exist: use split=test or split=val"] = "test"
    check_images: Annotated[int, Ge(1), "must be a whole number of at least 1"] = 500
    tolerance: Annotated[float, Ge(0), "must be a number of at least 0"] = 1e-3
    trusted_modules: list[str] | None = None
    registered_model: str | None = None
    alias: str = "champion"


def export(cfg: DictConfig) -> Path | str:
    """Writes the ONNX model (default <run>/model.onnx) once onnxruntime agrees with PyTorch on real images; with
    format=mlflow, registers the model instead (to_registry) and returns models:/NAME@ALIAS."""
    check_arguments(ExportOptions, {k: plain(v) for k, v in cfg.items() if k != "data"}, "")
    ckpt = plain(cfg.ckpt)
    if cfg.format == "mlflow":
        if is_group(ckpt):
            raise UserError("ckpt= names an ensemble: format=mlflow registers one run's model; use format=onnx")
        return to_registry(cfg)
    try:
        import onnx  # noqa: F401 (is_onnx_model's)
        import onnxruntime
    except ImportError:
        raise UserError('onnx or onnxruntime is not installed: pip install -e ".[export]"') from None
    checkpoints = named_checkpoints(ckpt, cfg.outputs)
    out, run = destination(cfg, checkpoints)
    graph, datamodule = graph_and_data(cfg, checkpoints)  # the data's folder is known once it is loaded
    if cfg.output and datamodule.folder:
        output_file(cfg.output, "output", [datamodule.folder], [run] if run else [], is_onnx_model)
    images = datamodule.splits[cfg.split].images[: cfg.check_images]

    def write_checked(tmp: Path) -> None:  # into a temporary file: a model that disagrees never takes out's place
        batch = {"images": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(graph, (images[:2],), str(tmp), input_names=["images"], output_names=["logits"],
                          dynamic_axes=batch, dynamo=False)  # fmt: skip
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
            raise UserError(
                f"the ONNX model disagrees with PyTorch: max abs logit difference {max_diff:.2e} > "
                f"tolerance={cfg.tolerance} (top-1 agreement {agreement:.2%}); nothing written"
            )

    write_atomic(out, write_checked)
    print(f"wrote {out}")
    return out


def is_onnx_model(path: Path) -> bool:
    """Whether `path` holds a model export.py writes (ONNX, uint8 `images` in, `logits` out): the only file output=
    replaces. A file over protobuf's 2 GiB is none, unread."""
    import onnx  # the export extra (export() has checked it is installed)

    if not path.is_file() or path.stat().st_size >= 2**31:
        return False
    try:
        graph = onnx.load(str(path), format="protobuf", load_external_data=False).graph
    except Exception:  # protobuf and onnx raise several kinds for what is no model
        return False
    return [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == ["logits"]


def destination(cfg: DictConfig, checkpoints: list[Path]) -> tuple[Path, RunFolder | None]:
    """Where the model goes (output=, else <run>/model.<format>, <sweep>/model.<format> for a sweep's ensemble)
    and the run folder that owns it (None for a list of runs). Raises UserError for a list without output=, or an
    output= that would replace an input, a file of the run, or anything in a member's run folder."""
    ckpt = plain(cfg.ckpt)
    group = is_group(ckpt)
    run = None if group else RunFolder.of_checkpoint(checkpoints[0])
    if group and isinstance(ckpt, str):
        run = RunFolder(user_path(ckpt))  # a sweep's folder holds its ensemble's model
    if cfg.output:
        out = output_file(cfg.output, "output", checkpoints, [run] if run else [], is_onnx_model)
    elif run is not None:
        return run.export_file(cfg.format), run
    else:
        raise UserError("ckpt=[...] names several runs: say where their ensemble's model goes with output=FILE")
    if group and any(out.resolve().is_relative_to(own) for own in members_own(checkpoints)):  # its model.onnx too
        raise UserError(f"output={cfg.output}: {out} lies in a member's run folder: choose a file outside the runs")
    return out, run


def graph_and_data(cfg: DictConfig, checkpoints: list[Path]) -> tuple[RawImagesToLogits, ImageDataModule]:
    """The graph to export, in eval mode, and the data it is checked on: one run's model, or an ensemble's members
    with the temperature fitted on their validation split at TTA 0 (tasks/ensemble.py, as evaluate.py fits it).
    Raises UserError as model_and_data and predict_members do."""
    resolved = cfg.copy()
    with open_dict(resolved):  # the checkpoints found, not looked up again; the members as the graph runs them
        resolved.update(ckpt=str(checkpoints[0]), tta=0, tta_fraction=None, coverage=None, conformal_score="raps")
        resolved.trainer = {"accelerator": "auto"}
    if not is_group(plain(cfg.ckpt)):
        _, model, data = model_and_data(resolved, cfg.split)
        return RawImagesToLogits([model]).eval(), data
    members, checked, temperature, _ = calibrated_members(resolved, checkpoints, [])
    if checked is None:
        raise UserError("the members' data is unknown (loose checkpoints) or differs: name the images to check the "
                        "export on, e.g. data=cifar10 data.root=data")  # fmt: skip
    if cfg.split not in checked.splits:
        raise UserError(f"the data in {checked.root} has no {cfg.split} split: check the export on split=test or val")
    return RawImagesToLogits([m.model.cpu() for m in members if m.model is not None], temperature).eval(), checked


def to_registry(cfg: DictConfig) -> str:
    """Logs the checkpoint as a pyfunc model (registry.ClassifierModel) of the MLflow run its run folder logged to,
    loads it back through MLflow, and once its top-1 classes equal PyTorch's and its probabilities are within
    `tolerance` on `check_images` images of `split`, registers it as a new version of `registered_model` with
    `alias` pointing at it. Only into a store the user owns (tracking.owned_record). Returns
    models:/NAME@ALIAS; raises UserError for a run not tracked with MLflow or a model that disagrees."""
    if not cfg.registered_model:
        raise UserError("format=mlflow registers the model under a name: add registered_model=NAME")
    try:
        import mlflow
    except ImportError:
        raise UserError("format=mlflow needs MLflow: pip install -e '.[track]'") from None
    checkpoint, model, datamodule = model_and_data(cfg, cfg.split)
    run = RunFolder.of_checkpoint(checkpoint)
    record = tracking.owned_record(run.path)
    if record is None:
        raise UserError(
            f"{run.path} was not tracked with MLflow in a store of its own ({tracking.RECORD} missing or naming "
            f"a store outside its folders): train with logger=mlflow to register its model"
        )
    images = datamodule.splits[cfg.split].images[: cfg.check_images]
    trusted = list(cfg.get("trusted_modules") or ())
    model_uri = registry.log(checkpoint, record["tracking_uri"], record["run_id"], images[:2].numpy(), trusted)
    got = mlflow.pyfunc.load_model(model_uri).predict(images.numpy())
    expected = model.predict_logits(images, None, registry.BATCH_SIZE, calibrated=True).softmax(dim=1)
    names = list(model.hparams["class_names"])
    max_diff = float(abs(torch.tensor(got[names].to_numpy()) - expected).max())
    agreement = float((got["class"].to_numpy() == [names[i] for i in expected.argmax(1)]).mean())
    print(
        f"checked on {len(images)} {cfg.split} images: max abs probability difference {max_diff:.2e}, "
        f"top-1 agreement {agreement:.2%}"
    )
    if max_diff > cfg.tolerance or agreement < 1:
        raise UserError(
            f"the MLflow model disagrees with PyTorch (max abs probability difference {max_diff:.2e}, top-1 "
            f"agreement {agreement:.2%}); logged as {model_uri} in MLflow run {record['run_id']}, not registered"
        )
    registered = registry.register(model_uri, record["tracking_uri"], cfg.registered_model, cfg.alias)
    print(f"registered {registered} (MLflow run {record['run_id']}, {record['tracking_uri']})")
    return registered
