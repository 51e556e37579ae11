"""One evaluation from a composed config: checkpoint -> predictions -> metrics, figures and report."""

import json
import shutil
import tempfile
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from cifar_lightning import figures, tracking
from cifar_lightning.calibration import fit_on_validation
from cifar_lightning.checkpoints import evaluation_data, load_model, resolve, run_dir_of, write_temperature
from cifar_lightning.checks import TTA, check_arguments, check_option
from cifar_lightning.corruptions import CORRUPTIONS, SEVERITIES
from cifar_lightning.data import InMemoryImages
from cifar_lightning.errors import UserError
from cifar_lightning.metrics import classification_report, evaluate_predictions
from cifar_lightning.module import plain
from cifar_lightning.robustness import choose, corruption_report

SPLITS = ("test", "val")


def evaluate(cfg: DictConfig) -> dict:
    """Writes <run>/eval/<split>/ (replacing it only once everything is written) and returns the metrics."""
    if cfg.split not in SPLITS:
        raise UserError(f"split={cfg.split} does not exist: use split=test or split=val")
    check_option("tta", cfg.tta, *TTA)
    check_option("misclassified", cfg.misclassified, int, least=0)
    check_option("calibrate", cfg.calibrate, bool)
    corruption_options = check_corruptions(plain(cfg.corruptions))
    checkpoint = resolve(str(cfg.ckpt), Path(cfg.outputs))
    model = load_model(checkpoint)
    if cfg.tta is not None:  # else the checkpoint's own level (e.g. 2 for the fast recipe)
        model.hparams.tta = int(cfg.tta)
    run_dir = run_dir_of(checkpoint)

    datamodule = evaluation_data(cfg.get("data"), run_dir)
    datamodule.setup("test")
    class_names = list(model.hparams.class_names)
    if datamodule.class_names != class_names:
        raise UserError(
            f"the checkpoint's classes ({', '.join(class_names[:5])}, ...: {len(class_names)}) do not "
            f"match the data's ({', '.join(datamodule.class_names[:5])}, ...: {datamodule.num_classes})"
        )
    if cfg.split not in datamodule.splits:
        raise UserError(f"the data in {datamodule.root} has no {cfg.split} split")

    trainer = instantiate(cfg.trainer)
    if cfg.calibrate:
        if "val" not in datamodule.splits:
            raise UserError(
                f"calibrate=true fits the temperature on a validation split, and the data in "
                f"{datamodule.root} has none (data.val_size=0): choose data with one"
            )
        temperature = fit_on_validation(trainer, model, datamodule)
        model.temperature.fill_(temperature)
        write_temperature(checkpoint, temperature)
        print(
            f"temperature {temperature:.4f} fitted on {len(datamodule.splits['val'])} validation images, "
            f"written into {checkpoint}"
        )
    batches = trainer.predict(model, dataloaders=datamodule.loader(cfg.split))
    logits = torch.cat([b[0] for b in batches]).cpu()
    labels = torch.cat([b[1] for b in batches]).cpu()
    evaluation = evaluate_predictions(logits, labels, class_names, float(model.temperature))
    robustness = examples = None
    if corruption_options:
        model.to(trainer.strategy.root_device)
        robustness, examples = corruption_table(model, datamodule.splits[cfg.split], **corruption_options)

    # data other than the run's own gets a folder of its own, e.g. eval/test_data-exact
    out = run_dir / "eval" / (cfg.split if cfg.get("data") is None else f"{cfg.split}_{datamodule.root.name}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{cfg.split}-") as tmp:
        tmp = Path(tmp)
        metrics = {
            **evaluation.metrics,
            "checkpoint": str(checkpoint),
            "split": cfg.split,
            "tta": model.hparams.tta,
            "data_root": str(datamodule.root),
            "reliability": evaluation.reliability,
            "reliability_uncalibrated": evaluation.reliability_uncalibrated,
            "confusion_matrix": evaluation.confusion.tolist(),
            **({"corruptions": robustness} if robustness else {}),
        }
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "classification_report.txt").write_text(classification_report(evaluation))
        pngs = [
            figures.confusion_matrix(evaluation, tmp / "confusion_matrix.png"),
            figures.misclassified(
                datamodule.splits[cfg.split].images,
                labels,
                model.probabilities(logits),
                class_names,
                tmp / "misclassified.png",
                cfg.misclassified,
            ),
            figures.reliability(evaluation, tmp / "reliability.png"),
        ]
        if robustness:
            pngs += [
                figures.corruption_heatmap(robustness, tmp / "corruptions.png"),
                figures.corruption_examples(*examples, tmp / "corruption_examples.png"),
            ]
        if (run_dir / "metrics.csv").is_file():
            pngs.insert(0, figures.training_curves(run_dir / "metrics.csv", tmp / "training_curves.png"))
        tta = f", TTA level {model.hparams.tta}" if model.hparams.tta else ""
        title = f"Evaluation of {checkpoint.name} on the {cfg.split} split ({datamodule.root}{tta})"
        figures.report(evaluation, pngs, title, tmp / "report.md", robustness)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        tmp.mkdir()  # TemporaryDirectory cleans up a folder of this name
    print(classification_report(evaluation))
    if robustness:
        print(
            f"mean corruption accuracy {robustness['mean_corruption_accuracy']:.2%} "
            f"({robustness['relative_accuracy']:.3f} x clean {robustness['clean_accuracy']:.2%}) on "
            f"{robustness['images']:,} images"
        )
    attached = tracking.attach(run_dir, out)
    if attached:
        print(f"attached to {attached}")
    print(f"checkpoint {checkpoint}\nwrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return metrics


def check_corruptions(options: dict | None) -> dict | None:
    if options is None:
        return None
    check_arguments(corruption_table, options, "corruptions")
    names, severities = options.get("names"), options.get("severities")
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        what = f"{', '.join(unknown)} is not one of the corruptions" if unknown else "lists no corruption"
        raise UserError(f"corruptions.names: {what} ({', '.join(CORRUPTIONS)})")
    if not severities or any(s not in SEVERITIES for s in severities):
        raise UserError(f"corruptions.severities={severities} must list severities from 1 to 5")
    for key in ("images", "batch_size"):
        check_option(f"corruptions.{key}", options.get(key), int, least=1)
    check_option("corruptions.seed", options.get("seed"), int, least=0)
    check_option("corruptions.tta", options.get("tta"), *TTA)
    return options


def corruption_table(
    model: L.LightningModule,
    split: InMemoryImages,
    names: list[str],
    severities: list[int],
    images: int,
    seed: int,
    tta: int | bool | None,
    batch_size: int,
) -> tuple[dict, tuple]:
    """The corruption table on `images` of the split's images, and the first one, clean and corrupted, for the
    figure. The model's own TTA level is put back afterwards."""
    chosen = choose(len(split), images, seed)
    pixels, labels = split.images[chosen], split.labels[chosen]
    own_tta, model.hparams.tta = model.hparams.tta, int(tta or 0)
    try:
        robustness, examples = corruption_report(model, pixels, labels, names, severities, seed, batch_size)
    finally:
        model.hparams.tta = own_tta
    return robustness, (pixels[0], examples)
