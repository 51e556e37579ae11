"""Predictions -> metrics: per-class report, averages, top-k, loss, calibration, confusion matrix (torchmetrics),
selective classification (selective.py)."""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from cifar_lightning.blocks import selective

ECE_BINS = 15


@dataclass
class Evaluation:
    class_names: list[str]
    metrics: dict  # everything in metrics.json
    confusion: torch.Tensor  # (C, C) counts, rows = true class
    reliability: list[dict]  # per confidence bin: lower, upper, count, confidence, accuracy (calibrated)
    reliability_uncalibrated: list[dict]  # the same for softmax(logits), before the temperature


def evaluate_predictions(
    logits: torch.Tensor, labels: torch.Tensor, class_names: list[str], temperature: float = 1.0
) -> Evaluation:
    """Metrics of `logits` (raw, before the temperature). Probabilities are softmax(logits / temperature); the
    calibration measures are reported before and after it."""
    n = len(class_names)
    probs = (logits.float() / temperature).softmax(dim=1)
    scores = {"precision": MulticlassPrecision, "recall": MulticlassRecall, "f1": MulticlassF1Score}
    per_class = {name: metric(n, average=None)(probs, labels) for name, metric in scores.items()}
    support = torch.bincount(labels, minlength=n)
    averages = {
        average: {name: float(metric(n, average=average)(probs, labels)) for name, metric in scores.items()}
        | {"support": int(support.sum())}
        for average in ("macro", "weighted")
    }
    before, after = calibration(logits, labels, 1.0), calibration(logits, labels, temperature)
    metrics = {
        "samples": len(labels),
        "accuracy": float(MulticlassAccuracy(n, average="micro")(probs, labels)),
        "top3_accuracy": float(MulticlassAccuracy(n, top_k=min(3, n), average="micro")(probs, labels)),
        "loss": float(F.cross_entropy(logits.float(), labels)),
        "ece": after["ece"],
        "calibration": {"temperature": temperature, "before": before, "after": after},
        "per_class": {
            name: {k: float(v[i]) for k, v in per_class.items()} | {"support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "macro_avg": averages["macro"],
        "weighted_avg": averages["weighted"],
        # in float64: confident images would tie at exactly 1.0 in float32, and the curve lose its order there
        "selective": selective.summary((logits.double() / temperature).softmax(dim=1), labels),
    }
    confusion = MulticlassConfusionMatrix(n)(probs, labels)
    return Evaluation(
        class_names,
        metrics,
        confusion,
        reliability_bins(probs, labels),
        reliability_bins(logits.float().softmax(dim=1), labels),
    )


def calibration(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """How well softmax(logits / temperature) matches the frequency of being right: expected and maximum
    calibration error (15 equal-width bins), negative log-likelihood and Brier score."""
    n = logits.shape[1]
    probs = (logits.float() / temperature).softmax(dim=1)
    return {
        "ece": float(MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="l1")(probs, labels)),
        "mce": float(MulticlassCalibrationError(n, n_bins=ECE_BINS, norm="max")(probs, labels)),
        "nll": float(F.cross_entropy(logits.float() / temperature, labels)),
        "brier": float((probs - F.one_hot(labels, n).float()).square().sum(dim=1).mean()),
    }


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS) -> list[dict]:
    """Top-1 confidence vs accuracy in equal-width confidence bins: the data behind the ECE and its diagram."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    which = torch.bucketize(confidence, edges[1:-1], right=True)  # bin i holds (edges[i], edges[i+1]]
    rows = []
    for i in range(bins):
        mask = which == i
        count = int(mask.sum())
        rows.append(
            {
                "lower": float(edges[i]),
                "upper": float(edges[i + 1]),
                "count": count,
                "confidence": float(confidence[mask].mean()) if count else None,
                "accuracy": float(correct[mask].mean()) if count else None,
            }
        )
    return rows


def classification_report(evaluation: Evaluation) -> str:
    """The per-class table in the familiar layout: precision, recall, f1-score, support."""
    m = evaluation.metrics
    width = max(12, *(len(c) for c in evaluation.class_names))
    header = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [header, ""]
    for name, row in m["per_class"].items():
        lines.append(
            f"{name:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}"
        )
    lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {m['accuracy']:9.4f} {m['samples']:9d}"]
    for label, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        row = m[key]
        lines.append(
            f"{label:>{width}} {row['precision']:9.4f} {row['recall']:9.4f} {row['f1']:9.4f} {row['support']:9d}"
        )
    c = m["calibration"]
    lines += [
        "",
        f"top-3 accuracy {m['top3_accuracy']:.4f}   mean loss {m['loss']:.4f}",
        f"calibration ({ECE_BINS} bins)   temperature {c['temperature']:.4f}",
        *(
            f"  {when:<6}  ECE {c[when]['ece']:.4f}   MCE {c[when]['mce']:.4f}   NLL {c[when]['nll']:.4f}   "
            f"Brier {c[when]['brier']:.4f}"
            for when in ("before", "after")
        ),
    ]
    return "\n".join(lines) + "\n"
