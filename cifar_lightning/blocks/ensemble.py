"""Ensembles: the mean of the members' calibrated probabilities, and the figures reported of any probabilities
(accuracy, calibration, selective classification, conformal sets), so that members and ensemble compare alike."""

from collections.abc import Sequence

import torch

from cifar_lightning.blocks import conformal, selective
from cifar_lightning.blocks.metrics import calibration


def average(probabilities: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's probabilities: the mean of the members' (each float (N, classes), softmax(logits / T_member)),
    float32 (N, classes). One member's are returned unchanged.

    Raises:
        ValueError: no member, or members of different shapes."""
    if not probabilities:
        raise ValueError("an ensemble needs one member at least")
    if len({tuple(p.shape) for p in probabilities}) > 1:
        raise ValueError(f"members' probabilities differ in shape: {[tuple(p.shape) for p in probabilities]}")
    return torch.stack([p.float() for p in probabilities]).mean(dim=0)


def pooled(probabilities: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """The ensemble's calibrated probabilities, float32 (N, classes): softmax(log(the members' mean) / temperature),
    "pool then calibrate" (Rahaman & Thiery, NeurIPS 2021); a temperature of 1 keeps the mean. Raises as average."""
    return (as_logits(average(probabilities)) / temperature).softmax(dim=1)


def as_logits(probabilities: torch.Tensor) -> torch.Tensor:
    """log(p), whose softmax is p again: probabilities given to what takes logits (metrics.evaluate_predictions,
    metrics.calibration, with temperature 1). A probability of 0 becomes log of the smallest float32, so that the
    NLL stays finite."""
    return probabilities.float().clamp_min(torch.finfo(torch.float32).tiny).log()


def figures(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor | None = None,
    levels: Sequence[float] = (),
    score: str = "raps",
    draws: torch.Tensor | None = None,
) -> dict:
    """A member's or the ensemble's figures for metrics.json: accuracy, ECE, MCE, NLL and Brier
    (metrics.calibration), `selective` (selective.summary) and, with calibration `scores` and `levels`, `conformal`
    (conformal.coverage_report under `score`, with the images' `draws` for raps_randomized). Accuracy and the errors
    are shares; NLL in nats per image."""
    found = {
        "accuracy": float((probabilities.argmax(dim=1) == labels).float().mean()),
        **calibration(as_logits(probabilities), labels, 1.0),
        "selective": selective.summary(probabilities, labels),
    }
    if scores is not None and len(scores) and levels:
        found["conformal"] = conformal.coverage_report(probabilities, labels, scores, list(levels), score, draws)
    return found
