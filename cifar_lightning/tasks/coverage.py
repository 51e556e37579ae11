"""The conformal options of evaluate.py, predict.py and ensembles (coverage=, conformal_score=), checked against what a
checkpoint holds: its conformal scores (blocks/conformal.py), the test-time augmentation they were fitted at, and the
probabilities randomised sets need. Every refusal is one UserError line."""

from pathlib import Path
from typing import Annotated, Any

import torch

from cifar_lightning.blocks import conformal
from cifar_lightning.blocks.data import InMemoryImages
from cifar_lightning.blocks.errors import UserError
from cifar_lightning.blocks.module import ImageClassifier, plain

# null: 0.9 and 0.95 when the checkpoint has conformal scores; [] none
COVERAGE_OPTION = Annotated[
    list[conformal.LEVEL] | conformal.LEVEL | None,
    "must be a coverage level in (0, 1) or a list of them, e.g. [0.9, 0.95]",
]
DEFAULT_COVERAGE = [0.9, 0.95]


def coverage_levels(
    coverage: Any,
    model: ImageClassifier,
    checkpoint: Path,
    as_fitted: bool = True,
    calibration_split: bool = False,
    score: str = "raps",
) -> list[float]:
    """The coverage levels to report (coverage=: one, a list, or null for DEFAULT_COVERAGE when the checkpoint has
    conformal scores, the logits are those the scores were fitted on (`as_fitted`: the checkpoint's own TTA) and the
    split is not the one they were fitted on (`calibration_split`: there the coverage is in-sample).

    Raises:
        UserError: levels asked of a checkpoint without scores, or of logits other than those they were fitted on;
            a `score` other than raps of scores kept without their probabilities."""
    levels = plain(coverage)
    has_scores = len(model.conformal_scores) > 0
    if levels is None:
        levels = DEFAULT_COVERAGE if has_scores and as_fitted and not calibration_split else []
    levels = [levels] if isinstance(levels, (int, float)) else list(levels)
    if levels and not has_scores:
        raise UserError(no_conformal_scores(f"coverage={coverage}", checkpoint))
    if levels and not as_fitted:
        raise UserError(
            f"coverage={coverage}: {checkpoint}'s conformal scores were fitted at its own test-time augmentation "
            f"(tta={model.hparams['tta']}, tta_fraction={model.hparams['tta_fraction']}), and their guarantee holds "
            "for those logits only: drop tta= and tta_fraction="
        )
    if levels:
        check_score(score, model, checkpoint)
    return [float(level) for level in levels]


def check_score(score: str, model: ImageClassifier, checkpoint: Path) -> None:
    """Raises UserError for a conformal score other than raps of a checkpoint whose scores were kept without their
    probabilities (conformal.calibration_values)."""
    if not conformal.supports(model.conformal_scores, score):
        raise UserError(
            f"conformal_score={score}: {checkpoint}'s conformal scores were kept without the probabilities it needs: "
            f"python evaluate.py ckpt={checkpoint} calibrate=true fits them again"
        )


def no_conformal_scores(asked: str, checkpoint: Path) -> str:
    """The one line refusing a coverage level of a checkpoint without conformal scores."""
    return (
        f"{asked}: {checkpoint} holds no conformal scores: trained without a validation split (data.val_size=0), "
        "it has no images it did not train on to fit them on (train with data.val_size above 0); saved before they "
        f"were kept, python evaluate.py ckpt={checkpoint} calibrate=true fits them"
    )


def draws(score: str, images: torch.Tensor) -> torch.Tensor | None:
    """The images' draws of u for raps_randomized sets (conformal.image_draws); None for the other scores."""
    return conformal.image_draws(images) if score == "raps_randomized" else None


def conformal_sets(
    levels: list[float], model: ImageClassifier, logits: torch.Tensor, split: InMemoryImages, score: str
) -> dict | None:
    """metrics.json's `conformal` (conformal.coverage_report) of the calibrated logits of the split's images under
    `score`; None without levels."""
    if not levels:
        return None
    scores = model.conformal_scores.cpu()
    return conformal.coverage_report(
        logits.softmax(dim=1), split.labels, scores, levels, score, draws(score, split.images)
    )


def check_coverage(
    coverage: Any, model: ImageClassifier | None, checkpoint: Path, tta: Any = None, score: str = "raps"
) -> None:
    """predict.py's coverage= (None: no sets) of one run's `model` (None: an ensemble, whose scores are fitted afresh
    on its validation split at any TTA): the model needs conformal scores, at the test-time augmentation they were
    fitted with (the checkpoint's), and for a `score` other than raps their probabilities. Raises UserError for a
    model without scores, another `tta`, or such a score without coverage=."""
    if coverage is None:
        if score != "raps":
            raise UserError(f"conformal_score={score} chooses how the sets of coverage= are made: add a level, "
                            "e.g. coverage=0.9")  # fmt: skip
        return
    if model is None:
        return
    if len(model.conformal_scores) == 0:
        raise UserError(no_conformal_scores(f"coverage={coverage}", checkpoint))
    if tta is not None and int(tta) != model.hparams["tta"]:
        raise UserError(
            f"coverage={coverage} with tta={tta}: {checkpoint}'s conformal scores were fitted at its own test-time "
            f"augmentation (tta={model.hparams['tta']}), and their guarantee holds for those logits only: drop tta="
        )
    check_score(score, model, checkpoint)
