"""One evaluation: checkpoint -> logits on a split -> a typed result -> metrics, figures and report (run folder)."""

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from annotated_types import Ge, Interval, MinLen
from omegaconf import DictConfig

from cifar_lightning.blocks import conformal, figures, ood, robustness, selective
from cifar_lightning.blocks.calibration import fit_on_validation
from cifar_lightning.blocks.checks import check_arguments, check_value
from cifar_lightning.blocks.corruptions import CORRUPTIONS
from cifar_lightning.blocks.data import ImageDataModule
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.metrics import Evaluation, classification_report, evaluate_predictions
from cifar_lightning.blocks.module import TTA_FRACTION, ImageClassifier, forward_passes_per_image, plain
from cifar_lightning.blocks.precision import inference_device
from cifar_lightning.store import tracking
from cifar_lightning.store.checkpoints import load_model, write_temperature
from cifar_lightning.store.locate import resolve
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.store.trust import run_data_config
from cifar_lightning.tasks.coverage import COVERAGE_OPTION, conformal_sets, coverage_levels

# null: the checkpoint's own level; true is 1, false 0
TTA_OPTION = Annotated[bool | Annotated[int, Interval(ge=0, le=2)] | None, "must be one of null, 0, 1, 2"]
# null: no out-of-distribution report
OOD_OPTION = Annotated[Literal["heldout", "generated"] | None, "must be one of null, heldout, generated"]


def whole_at_least(least: int) -> Any:
    return Annotated[int, Ge(least), f"must be a whole number of at least {least}"]


@dataclass
class EvaluateOptions:
    """The keys of configs/evaluate.yaml (data and corruptions are checked as what they build, trainer.accelerator
    by precision.inference_device)."""

    ckpt: str | list[str] = "best"  # a list, or a sweep folder: an ensemble (tasks/ensemble.py)
    split: Annotated[Literal["test", "val"], "does not exist: use split=test or split=val"] = "test"
    tta: TTA_OPTION = None
    tta_fraction: float | None = None  # checked against TTA_FRACTION when given
    outputs: str = "outputs"
    misclassified: whole_at_least(0) = 36  # type: ignore[valid-type]
    calibrate: bool = False
    coverage: COVERAGE_OPTION = None
    conformal_score: conformal.SCORE = "raps"
    ood: OOD_OPTION = None
    trusted_modules: list[str] | None = None
    out: str | None = None  # an ensemble's folder (tasks/ensemble.py)


@dataclass
class CorruptionOptions:
    """configs/corruptions/all.yaml: which corruptions of which severities on how many images."""

    names: Annotated[list[str], MinLen(1), "must list at least one corruption"]
    severities: Annotated[list[Annotated[int, Interval(ge=1, le=5)]], MinLen(1), "must list severities from 1 to 5"]
    images: whole_at_least(1)  # type: ignore[valid-type]
    seed: whole_at_least(0)  # type: ignore[valid-type]
    tta: TTA_OPTION
    batch_size: whole_at_least(1)  # type: ignore[valid-type]


@dataclass
class Result:
    """What an evaluation computed, before anything is written."""

    checkpoint: Path
    run: RunFolder
    out: Path  # the folder it goes to
    split: str
    tta: int
    tta_fraction: float
    data: ImageDataModule
    logits: torch.Tensor  # float32 (N, classes), uncalibrated
    labels: torch.Tensor  # int64 (N,)
    evaluation: Evaluation
    temperature: float
    robustness: dict | None = None
    conformal: dict | None = None  # conformal.coverage_report
    conformal_scores: torch.Tensor | None = None  # the checkpoint's, refitted with calibrate=true
    # (clean uint8 image, {name: [one per severity]})
    corruption_examples: tuple[torch.Tensor, dict[str, list[torch.Tensor]]] | None = None
    ood: dict | None = None  # ood.report
    ood_logits: dict[str, tuple[torch.Tensor, dict]] | None = None  # ood.set_logits


def evaluate(cfg: DictConfig) -> dict:
    """Writes <run>/eval/<split>/ (replacing it only once everything is written) and returns the metrics."""
    result = compute(cfg)
    metrics = write(result, cfg.misclassified)
    if cfg.calibrate:  # into the checkpoint only once the evaluation it was fitted for is written
        write_temperature(result.checkpoint, result.temperature, result.conformal_scores)
        print(
            f"temperature {result.temperature:.4f} and conformal scores fitted on {len(result.data.splits['val'])} "
            "validation images, "
            f"written into {result.checkpoint}"
        )
    report(result)
    return metrics


def check_options(cfg: DictConfig) -> dict | None:
    """The task's options, checked before the checkpoint is read; returns the corruption options or None."""
    options = {k: plain(v) for k, v in cfg.items() if k not in ("data", "corruptions", "trainer")}
    check_arguments(EvaluateOptions, options, "")
    if options.get("calibrate") and cfg.get("data") is not None:  # other data's may be images the run trained on
        raise UserError(
            "calibrate=true fits on the validation split the run held out, which its run folder names: drop data= "
            "(a checkpoint outside its run folder cannot be calibrated again)"
        )
    if options.get("tta_fraction") is not None:
        check_value("tta_fraction", options["tta_fraction"], TTA_FRACTION)
    corruptions = plain(cfg.get("corruptions"))
    if corruptions is not None:
        check_arguments(CorruptionOptions, corruptions, "corruptions")
        unknown = [n for n in corruptions["names"] if n not in CORRUPTIONS]
        if unknown:
            raise UserError(
                f"corruptions.names: {', '.join(unknown)} is not one of the corruptions ({', '.join(CORRUPTIONS)})"
            )
    return corruptions


def model_and_data(
    cfg: DictConfig, split: str | None, data: ImageDataModule | None = None
) -> tuple[Path, ImageClassifier, ImageDataModule]:
    """The checkpoint ckpt= names, its model, and the data it is evaluated on (the run's own unless data= is given,
    or `data` already set up: an ensemble's members share it), with the checkpoint's classes and the split (None:
    any)."""
    checkpoint = resolve(str(cfg.ckpt), Path(cfg.outputs))
    model = load_model(checkpoint, cfg.get("trusted_modules") or ())
    chosen = cfg.get("data")
    if data is None and chosen is not None:  # batch_size is training's (interpolated from train.yaml): unresolved
        data = ImageDataModule.for_evaluation(
            {k: plain(chosen[k]) for k in chosen if k not in ImageDataModule.NOT_FOR_EVALUATION}
        )
    elif data is None:
        data = ImageDataModule.for_evaluation(run_data_config(RunFolder.of_checkpoint(checkpoint).config))
    data.setup("test")  # once: a second call keeps what the first loaded
    class_names = list(model.hparams["class_names"])
    if data.class_names != class_names:
        raise UserError(
            f"the checkpoint's classes ({', '.join(class_names[:5])}, ...: {len(class_names)}) do not "
            f"match the data's ({', '.join(data.class_names[:5])}, ...: {data.num_classes})"
        )
    if split is not None and split not in data.splits:
        raise UserError(f"the data in {data.root} has no {split} split")
    return checkpoint, model, data


def calibrate_again(checkpoint: Path, model: ImageClassifier, data: ImageDataModule) -> None:
    """calibrate=true: the temperature and conformal scores fitted again on the validation split the run held out,
    into the model. Raises UserError while the run is being trained, or for a run that held out no validation
    split (check_options refuses data=)."""
    holder = RunFolder.of_checkpoint(checkpoint).trained_by()
    if holder:  # its checkpoints are rewritten with the temperature: never under a live trainer's saves
        raise UserError(
            f"calibrate=true rewrites {checkpoint}, whose run is being trained by {holder}: wait until it ends"
        )
    if "val" not in data.splits:
        raise UserError(
            f"calibrate=true fits the temperature on the validation split the run held out, and {checkpoint}'s run "
            "held out none (data.val_size=0): every image was trained on; train with data.val_size above 0"
        )
    fit_on_validation(model, data.splits["val"], data.eval_batch_size)


def compute(cfg: DictConfig) -> Result:
    """Everything evaluate.py reports, computed: logits, metrics, and with corruptions= the robustness table."""
    corruptions = check_options(cfg)
    checkpoint, model, data = model_and_data(cfg, cfg.split)
    ood_sets = out_of_distribution_sets(cfg.ood, data, data.splits[cfg.split].images)
    model.to(inference_device(cfg.trainer.accelerator))
    if cfg.calibrate:
        calibrate_again(checkpoint, model, data)
    tta = model.hparams["tta"] if cfg.tta is None else int(cfg.tta)
    fraction = model.hparams["tta_fraction"] if cfg.tta_fraction is None else float(cfg.tta_fraction)
    # the scores were fitted on the validation split's logits at the checkpoint's own test-time augmentation
    as_fitted = (tta, fraction) == (model.hparams["tta"], model.hparams["tta_fraction"])
    levels = coverage_levels(cfg.coverage, model, checkpoint, as_fitted, cfg.split == "val", cfg.conformal_score)
    split = data.splits[cfg.split]
    logits = model.predict_logits(split.images, tta, data.eval_batch_size, tta_fraction=fraction)
    temperature = float(model.temperature)
    run = RunFolder.of_checkpoint(checkpoint)
    result = Result(
        checkpoint=checkpoint,
        run=run,
        out=run.eval_dir(cfg.split, None if cfg.get("data") is None else data.root),
        split=cfg.split,
        tta=tta,
        tta_fraction=fraction,
        data=data,
        logits=logits,
        labels=split.labels,
        evaluation=evaluate_predictions(logits, split.labels, list(model.hparams["class_names"]), temperature),
        temperature=temperature,
        conformal=conformal_sets(levels, model, logits / temperature, split, cfg.conformal_score),
        conformal_scores=model.conformal_scores,
    )
    if corruptions:
        chosen = robustness.choose(len(split), corruptions["images"], corruptions["seed"])
        pixels, labels = split.images[chosen], split.labels[chosen]
        result.robustness, examples = robustness.corruption_report(
            model,
            pixels,
            labels,
            corruptions["names"],
            corruptions["severities"],
            corruptions["seed"],
            # null: the checkpoint's own level, as tta= means for the clean split
            model.hparams["tta"] if corruptions["tta"] is None else int(corruptions["tta"]),
            corruptions["batch_size"],
        )
        result.corruption_examples = (pixels[0], examples)
    out_of_distribution(result, cfg.ood, ood_sets, model)
    return result


def out_of_distribution_sets(choice: str | None, data: ImageDataModule, images: torch.Tensor) -> Iterable | None:
    """The sets ood= compares the split's images with (None: no ood=), before any logits, so that a refusal of
    ood=heldout (UserError: nothing held out) costs nothing; the generated sets are made as they are used."""
    if choice is None:
        return None
    return [ood.held_out(data)] if choice == "heldout" else ood.generated(images)


def out_of_distribution(result: Result, choice: str | None, sets: Iterable | None, model: ImageClassifier) -> None:
    """result.ood and its logits (left None without sets): each set at the TTA level of the clean split."""
    if choice is None or sets is None:
        return
    eval_batch_size = result.data.eval_batch_size
    result.ood_logits = ood.set_logits(model, sets, result.tta, result.tta_fraction, eval_batch_size)
    result.ood = ood.report(choice, result.logits, result.ood_logits, result.temperature)


def write(result: Result, misclassified: int) -> dict:
    """metrics.json, the classification report, the figures and report.md into the result's folder, which is
    replaced whole once all of them are written. Returns the metrics."""
    evaluation = result.evaluation
    metrics = {
        **evaluation.metrics,
        "checkpoint": str(result.checkpoint),
        "split": result.split,
        "tta": result.tta,
        "tta_fraction": result.tta_fraction,
        "forward_passes_per_image": forward_passes_per_image(result.tta, result.tta_fraction),
        "data_root": str(result.data.root),
        "reliability": evaluation.reliability,
        "reliability_uncalibrated": evaluation.reliability_uncalibrated,
        "confusion_matrix": evaluation.confusion.tolist(),
        **({"corruptions": result.robustness} if result.robustness else {}),
        **({"conformal": result.conformal} if result.conformal else {}),
        **({"ood": result.ood} if result.ood else {}),
    }
    probabilities = (result.logits / result.temperature).softmax(dim=1)
    with result.run.replace_folder(result.out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "classification_report.txt").write_text(classification_report(evaluation))
        images = result.data.splits[result.split].images
        pngs = [
            figures.confusion_matrix(evaluation, tmp / "confusion_matrix.png"),
            figures.misclassified(
                images, result.labels, probabilities, evaluation.class_names, tmp / "misclassified.png", misclassified
            ),
            figures.reliability(evaluation, tmp / "reliability.png"),
            figures.risk_coverage(evaluation, probabilities, result.labels, tmp / "risk_coverage.png"),
        ]
        if result.robustness and result.corruption_examples:
            pngs += [
                figures.corruption_heatmap(result.robustness, tmp / "corruptions.png"),
                figures.corruption_examples(*result.corruption_examples, tmp / "corruption_examples.png"),
            ]
        if result.ood_logits:
            pngs.append(ood.figure(result.logits, result.ood_logits, result.temperature, tmp / "ood.png"))
        if result.run.metrics_csv.is_file():
            pngs.insert(0, figures.training_curves(result.run.metrics_csv, tmp / "training_curves.png"))
        tta = f", TTA level {result.tta}" if result.tta else ""
        title = f"Evaluation of {result.checkpoint.name} on the {result.split} split ({result.data.root}{tta})"
        sections = [
            *([robustness.markdown(result.robustness)] if result.robustness else []),
            *([conformal.markdown(result.conformal)] if result.conformal else []),
            *([ood.markdown(result.ood)] if result.ood else []),
        ]
        figures.report(evaluation, pngs, title, tmp / "report.md", sections)
    return metrics


def report(result: Result) -> None:
    """The console's summary of a written evaluation; its files attached to the run's MLflow run, if it has one."""
    print(classification_report(result.evaluation))
    print(selective.describe(result.evaluation.metrics["selective"]))
    if result.robustness:
        print(robustness.console_line(result.robustness))
    if result.conformal:
        print(conformal.console_line(result.conformal))
    if result.ood:
        print(ood.console_lines(result.ood))
    attached = tracking.attach(result.run.path, result.out)
    if attached:
        print(f"attached to {attached}")
    files = ", ".join(sorted(p.name for p in result.out.iterdir()))
    print(f"checkpoint {result.checkpoint}\nwrote {result.out}/ ({files})")
