"""Selective classification: answer only when confident enough, and how the error falls as the model abstains more.

The selector keeps the images whose confidence (the calibrated top probability, softmax(logits / T)) is at least a
threshold. Coverage is the share of images kept; selective risk the share of errors among them. Lowering the threshold
from the top traces the risk-coverage curve; the area under it is the AURC. References: Geifman & El-Yaniv, "Selective
Classification for Deep Neural Networks" (NeurIPS 2017) for the curve and the risk at a coverage; Geifman, Uziel &
El-Yaniv, "Bias-Reduced Uncertainty Estimation for Deep Neural Classifiers" (ICLR 2019) for AURC and E-AURC.

Ties: images of equal confidence are one threshold (a threshold keeps all of them or none), so the curve has a point
only after each group of equal confidences (sorted by confidence, descending) and every image of a group counts with
that group's risk. The results therefore do not depend on the order of the images.
"""

import numpy as np
import torch

RISK_AT_COVERAGE = 0.8  # risk at 80% coverage
COVERAGE_AT_RISK = 0.05  # coverage at 5% risk
_TOLERANCE = 1e-12  # so that 1 error in 20 counts as 5% risk despite floating point


def curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve: (coverage, selective risk) after each group of equal confidences, from the most
    confident down; both are shares in [0, 1] and the last coverage is 1. Raises ValueError on empty input."""
    confidence = np.asarray(confidence, dtype=np.float64)
    errors = 1.0 - np.asarray(correct, dtype=np.float64)
    if confidence.size == 0 or confidence.shape != errors.shape:
        raise ValueError("curve needs as many correctness values as confidences, at least one")
    order = np.argsort(-confidence, kind="stable")
    ranked = confidence[order]
    ends = np.append(np.flatnonzero(np.diff(ranked)), len(ranked) - 1)  # the last image of each group
    kept = ends + 1
    return kept / len(ranked), np.cumsum(errors[order])[ends] / kept


def aurc(coverage: np.ndarray, risk: np.ndarray) -> float:
    """Area under the risk-coverage curve (a step per group: its risk over the coverage it adds), in [0, 1]."""
    return float(np.sum(np.diff(coverage, prepend=0.0) * risk))


def oracle_curve(correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The risk-coverage curve of an oracle that ranks every error last, for the same accuracy: after k of n images,
    coverage k / n and risk max(0, k - correct) / k."""
    n, right = len(correct), int(np.sum(correct))
    kept = np.arange(1, n + 1)
    return kept / n, np.maximum(0, kept - right) / kept


def oracle_aurc(correct: np.ndarray) -> float:
    """The oracle's AURC, the least any confidence reaches at this accuracy (Geifman et al. 2019 give its limit
    r + (1 - r) ln(1 - r) for an error rate r); E-AURC = AURC - oracle AURC."""
    return aurc(*oracle_curve(correct))


def risk_at(coverage: np.ndarray, risk: np.ndarray, target: float = RISK_AT_COVERAGE) -> float:
    """The selective risk at the smallest coverage a threshold reaches that is at least `target` (a share)."""
    return float(risk[np.argmax(coverage >= target - _TOLERANCE)])


def coverage_at(coverage: np.ndarray, risk: np.ndarray, target: float = COVERAGE_AT_RISK) -> float:
    """The largest coverage whose selective risk is at most `target` (a share); 0 when none is."""
    within = coverage[risk <= target + _TOLERANCE]
    return float(within.max()) if within.size else 0.0


def summary(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """metrics.json's `selective`: AURC, E-AURC (AURC minus the oracle's), the risk at 80% coverage and the coverage at
    5% risk, all shares, for the confidence max(probs) (probs: (N, C) calibrated probabilities, labels: (N,))."""
    confidence, predicted = probs.double().max(dim=1)
    correct = (predicted == labels).cpu().numpy()
    coverage, risk = curve(confidence.cpu().numpy(), correct)
    area, oracle = aurc(coverage, risk), oracle_aurc(correct)
    return {
        "confidence": "calibrated top probability, softmax(logits / T)",
        "aurc": area,
        "e_aurc": area - oracle,
        "oracle_aurc": oracle,
        "risk_at_80_coverage": risk_at(coverage, risk),
        "coverage_at_5_risk": coverage_at(coverage, risk),
    }


def describe(selective: dict) -> str:
    """One line for the console and report.md."""
    return (
        f"Selective classification: AURC {selective['aurc']:.4f} (E-AURC {selective['e_aurc']:.4f}), "
        f"risk {selective['risk_at_80_coverage']:.2%} at 80% coverage, "
        f"coverage {selective['coverage_at_5_risk']:.2%} at 5% risk"
    )


def abstains(confidence: torch.Tensor, below: float | None) -> torch.Tensor:
    """Which images to abstain on (bool, like `confidence`): calibrated top probability strictly below `below`
    (a share in [0, 1]); none when `below` is None."""
    return torch.zeros_like(confidence, dtype=torch.bool) if below is None else confidence < below
