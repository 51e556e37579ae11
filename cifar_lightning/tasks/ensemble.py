"""Ensembles, for evaluate.py, predict.py and export.py: ckpt= names a sweep folder (its finished, unpruned jobs) or a
list of runs. The ensemble's probabilities are the mean of its members' calibrated ones, softmax(logits / T), each
at its own TTA (tta= and tta_fraction= override them for all), then calibrated as one model: the log of that mean
over a temperature of the ensemble's own, fitted on the validation split the members held out, whatever data=
evaluates ("pool then calibrate", Rahaman & Thiery, NeurIPS 2021: a mean of calibrated members is underconfident).
Members that hold out no validation split in common (val_size=0; with data=, folds or loose checkpoints) keep the
plain mean, without sets. evaluate.py writes <sweep>/eval/<split>[_<data folder>]/ or out=DIR (required for a list):
metrics.json (the ensemble as a single model, `members`, `ensemble`), figures, report.md. Refused in one line:
calibrate=true, corruptions=, ood=, members of other classes or, without data=, of another data config (batch sizes
and num_workers aside). Members share their data, loaded once.
"""

import json
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, open_dict

from cifar_lightning.blocks import conformal, ensemble, figures, selective
from cifar_lightning.blocks.calibration import fit_on_logits
from cifar_lightning.blocks.data import ImageDataModule, InMemoryImages
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.metrics import Evaluation, classification_report, evaluate_predictions
from cifar_lightning.blocks.module import ImageClassifier, plain
from cifar_lightning.blocks.paths import user_path
from cifar_lightning.blocks.precision import inference_device
from cifar_lightning.store.checkpoints import load_model
from cifar_lightning.store.locate import group_checkpoints, is_group, resolve
from cifar_lightning.store.runs import RunFolder
from cifar_lightning.store.trust import run_data_config
from cifar_lightning.tasks.coverage import DEFAULT_COVERAGE, draws
from cifar_lightning.tasks.evaluate import check_options, evaluate, model_and_data

IGNORED = (*ImageDataModule.NOT_FOR_EVALUATION, "eval_batch_size", "num_workers")  # change no image


@dataclass
class Member:
    """One member, evaluated: its probabilities on the split (and the validation split, for conformal sets)."""

    checkpoint: Path
    tta: int
    tta_fraction: float
    temperature: float
    probabilities: torch.Tensor  # float32 (N, classes), softmax(logits / T); empty: no split asked
    validation: torch.Tensor | None
    scores: torch.Tensor  # the checkpoint's conformal scores (may be empty)
    model: ImageClassifier | None = None

    def predict(self, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        """The member's calibrated probabilities of uint8 images (N, C, H, W): softmax(logits / T) at its TTA
        level, float32 (N, classes) on the CPU."""
        assert self.model is not None, "a member evaluated without its model"
        logits = self.model.predict_logits(images, self.tta, batch_size, tta_fraction=self.tta_fraction)
        return (logits / self.temperature).softmax(dim=1)


def evaluate_any(cfg: DictConfig) -> dict:
    """evaluate.py's task: an ensemble when ckpt= names several runs (store.locate.is_group), else one checkpoint
    (tasks/evaluate.py). Returns the metrics. Raises UserError for out= without an ensemble."""
    if is_group(plain(cfg.ckpt)):
        return evaluate_ensemble(cfg)
    if cfg.get("out") is not None:
        raise UserError(
            f"out= places an ensemble's evaluation; one run's goes to its eval/<split>/: drop out={cfg.out}"
        )
    return evaluate(cfg)


def evaluate_ensemble(cfg: DictConfig) -> dict:
    """Evaluates the ensemble ckpt= names, writes its folder (whole, once everything is written), prints a summary
    and returns the metrics. Raises UserError as the module's docstring says."""
    if check_options(cfg) or cfg.calibrate or cfg.get("ood") is not None:
        raise UserError(
            "an ensemble is evaluated as its members are: calibrate=true, corruptions= and ood= take one run"
        )
    ckpt, checkpoints = plain(cfg.ckpt), named_checkpoints(cfg.ckpt, cfg.outputs)
    out = None if cfg.get("out") is None else out_folder(str(cfg.out), checkpoints)
    if out is None and not isinstance(ckpt, str):
        raise UserError("ckpt=[...] names several runs: say where their ensemble's evaluation goes with out=DIR")
    levels = DEFAULT_COVERAGE if cfg.coverage is None else plain(cfg.coverage)
    levels = [float(v) for v in ([levels] if isinstance(levels, (int, float)) else levels)]
    members, data, own = predict_members(cfg, checkpoints, levels, cfg.split)
    assert data is not None  # a split evaluated: on data= or on the data the members share
    if out is None:
        out = RunFolder(user_path(ckpt)).eval_dir(cfg.split, None if cfg.get("data") is None else data.root)
    evaluation, metrics, probabilities = compute(members, (data, own), cfg.split, levels, cfg.conformal_score)
    write(out, evaluation, metrics, probabilities, data.splits[cfg.split], cfg.misclassified)
    print(classification_report(evaluation))
    print(selective.describe(metrics["selective"]))
    if "conformal" in metrics:
        print(conformal.console_line(metrics["conformal"]))
    print(members_table(metrics))
    print(f"wrote {out}/ ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return metrics


def named_checkpoints(ckpt: Any, outputs: str) -> list[Path]:
    """The checkpoints ckpt= names: one (store.locate.resolve, ckpt=best looking under `outputs`), or an ensemble's
    (a sweep folder, a list of runs: store.locate.group_checkpoints), with a note of the jobs left out. Raises
    UserError as those do."""
    ckpt = plain(ckpt)
    if not is_group(ckpt):
        return [resolve(str(ckpt), Path(outputs))]
    checkpoints, notes = group_checkpoints(ckpt)
    for note in notes:
        print(f"note: {note}")
    print(f"ensemble of {len(checkpoints)}: {', '.join(map(str, checkpoints))}")
    return checkpoints


def members_own(checkpoints: list[Path]) -> list[Path]:
    """What an ensemble's output may neither lie in nor hold, resolved: each member's run folder, or the checkpoint
    itself when it lies loose (its folder is the user's, not the run's)."""
    runs = [(c, RunFolder.of_checkpoint(c).path) for c in checkpoints]
    return [(run if (run / ".hydra").is_dir() else c).resolve() for c, run in runs]


def out_folder(value: str, checkpoints: list[Path]) -> Path:
    """The folder out= names, once it is clear that replacing it destroys nothing: it neither lies in nor holds a
    member's run folder, and it is new, empty or an earlier ensemble evaluation. Raises UserError otherwise."""
    path = user_path(value)
    for run in members_own(checkpoints):
        if path.resolve().is_relative_to(run) or run.is_relative_to(path.resolve()):
            raise UserError(f"out={value}: {path} overlaps the member {run}: choose a folder outside the runs")
    earlier = None
    with suppress(OSError, ValueError):
        earlier = json.loads((path / "metrics.json").read_text())
    if path.exists():
        empty = path.is_dir() and not any(path.iterdir())
        if not (empty or isinstance(earlier, dict) and "members" in earlier):
            raise UserError(
                f"out={value}: {path} exists and is no ensemble evaluation (out= is replaced whole): choose a new "
                "folder"
            )
    return path


def predict_members(
    cfg: DictConfig, checkpoints: list[Path], levels: list[float], split: str | None, keep_models: bool = False
) -> tuple[list[Member], ImageDataModule | None, ImageDataModule | None]:
    """Each member's calibrated probabilities on `split` (None: none) of the data evaluated (data=, else the members'
    own) and on the validation split of the members' own data, which calibrates the ensemble (never data='s: it may
    hold images they trained on). Returns the members (with their models if `keep_models`), the data evaluated and
    the members' own data, each loaded once or None: with data= or no split, members of other data configs (k-fold
    members) or loose checkpoints hold out no validation split in common, and the ensemble keeps the plain mean.
    Raises UserError (check_alike) before a member unlike the first predicts, and for coverage levels without one."""
    device, chosen_data = inference_device(cfg.trainer.accelerator), cfg.get("data") is not None
    # only where their own data is evaluated (evaluate.py without data=) must the members share it
    unknown_ok = chosen_data or split is None
    configs = [None if unknown_ok and not RunFolder.of_checkpoint(c).config.is_file() else data_config(c)
               for c in checkpoints]  # fmt: skip
    common = not unknown_ok or configs[0] is not None and all(c == configs[0] for c in configs)
    if not common and levels and cfg.coverage is not None:
        raise UserError(no_sets(cfg.coverage, "other data configs, such as folds, or loose checkpoints"))
    if not common:
        print("note: the members hold out no validation split in common (other data configs, such as folds, or loose "
              "checkpoints): the ensemble keeps the plain mean of their calibrated probabilities")  # fmt: skip
    members: list[Member] = []
    first: tuple[Path, list[str], dict] | None = None
    own: ImageDataModule | None = None
    chosen: ImageDataModule | None = None
    for checkpoint, config in zip(checkpoints, configs):
        one = cfg.copy()
        with open_dict(one):  # model_and_data's checks (classes vs data, the split), member by member
            one.ckpt, one.data = str(checkpoint), None
        if common:
            shared = own if first is not None and config == first[2] else None
            checkpoint, model, mine = model_and_data(one, None if chosen_data else split, shared)
            own = mine if own is None else own
        if chosen_data:
            one.data = cfg.data
            checkpoint, model, chosen = model_and_data(one, split, chosen)  # the images evaluated, loaded once too
        elif not common:  # predict.py, export.py: the model alone
            model = load_model(checkpoint, cfg.get("trusted_modules") or ())
        this = (checkpoint, list(model.hparams["class_names"]), config if common and config is not None else {})
        check_alike(this, first or this)
        first = first or this
        if levels and cfg.coverage is not None and own is not None and "val" not in own.splits:
            raise UserError(no_sets(cfg.coverage, "data.val_size=0"))
        evaluated = chosen if chosen is not None else own
        members.append(predict_member(cfg, checkpoint, model.to(device), (evaluated, own), split))
        members[-1].model = model if keep_models else None  # else freed: many members need not fit at once
    return members, evaluated, own


def calibrated_members(
    cfg: DictConfig, checkpoints: list[Path], levels: list[float]
) -> tuple[list[Member], ImageDataModule | None, float, torch.Tensor | None]:
    """predict.py's and export.py's ensemble: the members with their models (predict_members, no split predicted),
    the data evaluated, and the ensemble's temperature and conformal scores (calibrate), printed. Raises UserError as
    predict_members does."""
    members, data, own = predict_members(cfg, checkpoints, levels, None, keep_models=True)
    temperature, scores = calibrate(members, own)
    fitted = "no validation split held out in common: the plain mean"
    if own is not None and "val" in own.splits:
        tta = ", ".join(map(str, sorted({m.tta for m in members})))
        fitted = f"fitted on {len(own.splits['val'])} validation images of {own.root} at TTA {tta}"
    print(f"ensemble temperature {temperature:.3f} ({fitted})")
    return members, data, temperature, scores


def no_sets(coverage: Any, why: str) -> str:
    """The one line refusing coverage= of an ensemble whose members hold out no validation split in common."""
    return (
        f"coverage={coverage}: an ensemble's conformal sets are calibrated on a validation split all its members held "
        f"out, and they hold out none in common ({why}): drop coverage="
    )


def predict_member(
    cfg: DictConfig,
    checkpoint: Path,
    model: ImageClassifier,
    data: tuple[ImageDataModule | None, ImageDataModule | None],
    split: str | None,
) -> Member:
    """One member's calibrated probabilities on `split` of the data evaluated and on the validation split of its
    own data if there is one (the ensemble's temperature is fitted there): `data` is (evaluated, own). With its
    checkpoint's TTA level unless tta= / tta_fraction= say otherwise."""
    tta = model.hparams["tta"] if cfg.tta is None else int(cfg.tta)
    fraction = model.hparams["tta_fraction"] if cfg.get("tta_fraction") is None else float(cfg.tta_fraction)
    scores = model.conformal_scores.cpu()
    if not conformal.supports(scores, cfg.conformal_score):  # kept without their probabilities: no sets of its own
        scores = scores[:0]
    member = Member(checkpoint, tta, fraction, float(model.temperature), torch.empty(0), None, scores, model)
    evaluated, own = data
    if split is not None and evaluated is not None:  # a split is asked with data, data= or the members' own
        member.probabilities = member.predict(evaluated.splits[split].images, evaluated.eval_batch_size)
    if own is not None and "val" in own.splits:
        member.validation = member.predict(own.splits["val"].images, own.eval_batch_size)
    return member


def data_config(checkpoint: Path) -> dict:
    """The data config the member's run was trained on, without what changes no image (IGNORED)."""
    config = run_data_config(RunFolder.of_checkpoint(checkpoint).config)
    return {k: v for k, v in config.items() if k not in IGNORED}


def check_alike(member: tuple[Path, list[str], dict], first: tuple[Path, list[str], dict]) -> None:
    """A member (checkpoint, classes, the data config it was trained on) can join the `first`: same classes and
    the same data config (so that they share its data). Raises UserError: one line naming both and what differs."""
    checkpoint, classes, config = member
    if classes != first[1]:
        raise UserError(
            f"the ensemble's members differ in classes: {first[0]} has {describe(first[1])}, {checkpoint} has "
            f"{describe(classes)}: ensemble runs trained on the same classes"
        )
    if config != first[2]:
        keys = sorted(k for k in {*config, *first[2]} if config.get(k) != first[2].get(k))
        differ = ", ".join(f"data.{k} {config.get(k)} vs {first[2].get(k)}" for k in keys)
        raise UserError(
            f"{checkpoint} was trained on other data than {first[0]} ({differ}): an ensemble's members are trained "
            "on the same data"
        )


def describe(classes: list[str]) -> str:
    return f"{', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''} ({len(classes)})"


def compute(
    members: list[Member],
    evaluated_and_own: tuple[ImageDataModule, ImageDataModule | None],
    split: str,
    levels: list[float],
    score: str = "raps",
) -> tuple[Evaluation, dict, torch.Tensor]:
    """The ensemble's Evaluation (metrics.evaluate_predictions of its probabilities on `split` of the data evaluated),
    calibrated on the members' own data (calibrate), metrics.json's content and the
    ensemble's probabilities; conformal sets of `score` (conformal.py)."""
    data, own = evaluated_and_own
    labels = data.splits[split].labels
    drawn = draws(score, data.splits[split].images)
    each = [m.probabilities for m in members]
    temperature, scores = calibrate(members, own)
    evaluation = evaluate_predictions(ensemble.as_logits(ensemble.average(each)), labels, data.class_names, temperature)
    probabilities = ensemble.pooled(each, temperature)
    mine = ensemble.figures(probabilities, labels, scores, levels, score, drawn)
    metrics = {
        **evaluation.metrics,
        "split": split,
        "data_root": str(data.root),
        "probabilities": "softmax(log(mean of the members' softmax(logits / T_member)) / T), each member with its own "
        "TTA, T the ensemble's temperature (calibration.temperature)",
        "ensemble": {k: v for k, v in mine.items() if k != "conformal"},
        "members": [
            {
                "checkpoint": str(m.checkpoint),
                "tta": m.tta,
                "tta_fraction": m.tta_fraction,
                "temperature": m.temperature,
                **ensemble.figures(m.probabilities, labels, m.scores, levels, score, drawn),
            }
            for m in members
        ],  # fmt: skip
        "reliability": evaluation.reliability,
        "confusion_matrix": evaluation.confusion.tolist(),
        **({"conformal": mine["conformal"]} if "conformal" in mine else {}),
    }
    return evaluation, metrics, probabilities


def calibrate(members: list[Member], own: ImageDataModule | None) -> tuple[float, torch.Tensor | None]:
    """The ensemble's own temperature and conformal scores (calibration.fit_on_logits), fitted on the mean of the
    members' probabilities over the validation split of their `own` data; (1.0, None) without one in common."""
    if own is None or members[0].validation is None:
        return 1.0, None
    validation = ensemble.as_logits(ensemble.average([m.validation for m in members if m.validation is not None]))
    return fit_on_logits(validation, own.splits["val"].labels)


def write(
    out: Path, evaluation: Evaluation, metrics: dict, probabilities: torch.Tensor, split: InMemoryImages, count: int
) -> None:
    """metrics.json, the classification report, figures (`count` most confident mistakes among the `split`'s
    images) and report.md (with the members' table) into `out`, replaced whole once all are written."""
    with RunFolder(out.parent).replace_folder(out) as tmp:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        (tmp / "classification_report.txt").write_text(classification_report(evaluation))
        pngs = [
            figures.confusion_matrix(evaluation, tmp / "confusion_matrix.png"),
            figures.misclassified(
                split.images, split.labels, probabilities, evaluation.class_names, tmp / "misclassified.png", count
            ),  # fmt: skip
            figures.reliability(evaluation, tmp / "reliability.png"),
            figures.risk_coverage(evaluation, probabilities, split.labels, tmp / "risk_coverage.png"),
        ]
        title = f"Ensemble of {len(metrics['members'])} on the {metrics['split']} split ({metrics['data_root']})"
        sections = [
            members_table(metrics),
            *([conformal.markdown(metrics["conformal"])] if "conformal" in metrics else []),
        ]
        figures.report(evaluation, pngs, title, tmp / "report.md", sections)


def members_table(metrics: dict) -> str:
    """The members and the ensemble side by side (markdown): accuracy, ECE, NLL, Brier, AURC."""
    lines = ["## Members", "", "| member | accuracy (%) | ECE | NLL | Brier | AURC |", "|---|---|---|---|---|---|"]
    rows = [*((m["checkpoint"], m) for m in metrics["members"]), ("**ensemble**", metrics["ensemble"])]
    lines += [
        f"| {name} | {100 * f['accuracy']:.2f} | {f['ece']:.4f} | {f['nll']:.4f} | {f['brier']:.4f} "
        f"| {f['selective']['aurc']:.4f} |"
        for name, f in rows
    ]
    return "\n".join(lines) + "\n"
