"""Split conformal prediction sets: for a coverage level 1 - alpha, each image gets a set of classes that holds its
true class with probability at least 1 - alpha, whatever the model, provided the calibration images (here the
validation split) and the new images are exchangeable (drawn alike, e.g. i.i.d. from one distribution).

The score is RAPS (Angelopoulos, Bates, Malik and Jordan, "Uncertainty Sets for Image Classifiers using Conformal
Prediction", ICLR 2021), which adds a penalty to APS (Romano, Sesia and Candès, NeurIPS 2020), with the paper's
defaults LAMBDA = 0.01 and K_REG = 5. The paper's score of class y for an image with probabilities p is the mass of
the classes ranked above y, a share u of y's own probability, and LAMBDA per rank of y beyond K_REG:

    s(x, y) = p_(1) + ... + p_(o(y)-1) + u * p_(o(y)) + LAMBDA * max(o(y) - K_REG, 0),   o(y) = y's rank (1 = top)

where the randomised version draws u uniform in [0, 1] for each image. By default u = 0 for every image: NOT
randomised, so the same image and checkpoint always give the same set, in every run and on every machine, which a
user can act on and a test can check. Why u = 0 rather than the paper's non-randomised u = 1: with u = 1 the top
class's score is its probability, which for an accurate, confident model is 1 in float32 for many images; the
threshold is then 1 and every set holds K_REG classes or more, whatever the level (a simulated 95%-accurate model: 5
classes at 90%). With u = 0 the most probable class scores 0 and is always in the set, and the sets are about as
small as the randomised ones. Any fixed score keeps the guarantee; a deterministic one pays with over-coverage when
the level is below the accuracy: the top class is always in the set, so the coverage is at least the accuracy.
Randomised sets are the paper's randomised RAPS with empty sets allowed (its code's allow_zero_sets): u is drawn for
every calibration image (from a fixed seed) and every new image (from a hash of its pixels, `image_draws`: the same
image always gets the same u, whatever comes with it), and the expected coverage is between the level and the
level + 1 / (n + 1) (n calibration images), even for a model more accurate than the level, some of whose images
(mostly the least confident) then get empty sets.

The calibration images' scores of their true class (u = 0) are kept (sorted) in the checkpoint with the probability
of that class (which randomised scores add u times): any level can be computed from them later. For a level
1 - alpha, the threshold q is the k-th smallest of the n calibration scores with k = ceil((n + 1)(1 - alpha)) (the
finite-sample quantile ceil((n + 1)(1 - alpha)) / n), and an image's set is every class whose score is at most q.
Then P(y in set) = P(s(x, y) <= q) >= 1 - alpha (split conformal prediction).

THR (Sadinle, Lei and Wasserman, "Least Ambiguous Set-Valued Classifiers with Bounded Error Levels", JASA 2019) scores
a class by 1 minus its probability: the smallest sets on average, deterministic, empty when no class is probable
enough; it is computed from the probabilities kept beside the RAPS scores.

Changing LAMBDA or K_REG changes the scores, and randomised sets need the probabilities kept beside them: checkpoints
fitted before must be refitted (evaluate.py calibrate=true). All functions take probabilities float (N, classes),
e.g. softmax(logits / temperature).
"""

import hashlib
import math
from fractions import Fraction
from typing import Annotated, Literal

import torch
from annotated_types import Interval

LAMBDA = 0.01  # RAPS' penalty per rank beyond K_REG (the paper's default)
SEED = 0  # the draws of u of the calibration images in randomised sets
# the conformity score: raps (u = 0), raps_randomized (the paper's randomised RAPS), thr (1 - the class's probability)
SCORE = Annotated[
    Literal["raps", "raps_randomized", "thr"], "must be raps, raps_randomized or thr (docs/predictions.md)"
]
K_REG = 5  # the ranks that are not penalised
# a coverage level 1 - alpha
LEVEL = Annotated[float, Interval(gt=0, lt=1), "must be a coverage level in (0, 1), e.g. 0.9"]


def class_scores(probabilities: torch.Tensor) -> torch.Tensor:
    """The RAPS score s(x, y) (u = 0) of every class y of each image: float (N, classes), in class order. Ties in
    probability are ranked by class index (a stable sort), so that the scores are reproducible."""
    order = probabilities.argsort(dim=1, descending=True, stable=True)
    ranks = torch.arange(1, probabilities.shape[1] + 1, dtype=probabilities.dtype, device=probabilities.device)
    penalty = LAMBDA * (ranks - K_REG).clamp(min=0)
    ranked = probabilities.gather(1, order)
    above = ranked.cumsum(dim=1) - ranked  # the mass of the classes ranked above each
    return torch.empty_like(ranked).scatter_(1, order, above + penalty)


def calibration_scores(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The calibration images' (int64 labels (N,)) true classes: float (N, 2), their score (u = 0) in column 0,
    ascending, and their probability in column 1 (what a randomised score adds u times)."""
    true = labels[:, None]
    scores, own = class_scores(probabilities).gather(1, true).squeeze(1), probabilities.gather(1, true).squeeze(1)
    order = scores.argsort(stable=True)
    return torch.stack([scores[order], own[order]], dim=1)


def uniform(count: int, seed: int) -> torch.Tensor:
    """`count` draws of u, uniform in [0, 1), float64, the same for the same seed on every machine."""
    return torch.rand(count, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def image_draws(images: torch.Tensor) -> torch.Tensor:
    """Each image's u for randomised sets: uint8 images (N, C, H, W) -> float64 (N,) in [0, 1), from a hash
    (BLAKE2b) of its pixels, so that an image gets the same u alone, in any batch, on any machine, and distinct
    images get draws that behave as independent uniform ones."""
    pixels = images.cpu().contiguous().numpy()
    digests = (hashlib.blake2b(image.tobytes(), digest_size=8).digest() for image in pixels)
    return torch.tensor([int.from_bytes(d, "big") / 2**64 for d in digests], dtype=torch.float64)


def supports(scores: torch.Tensor, score: str) -> bool:
    """Whether kept calibration `scores` can give `score`: raps from any, the others only from calibration_scores'
    (N, 2), which keep each class's probability (plain RAPS scores (N,) were kept without it)."""
    return score == "raps" or scores.dim() == 2


def calibration_values(scores: torch.Tensor, score: str = "raps") -> torch.Tensor:
    """The calibration images' conformity scores under `score`, float64 (N,), from calibration_scores' (N, 2) or
    plain RAPS scores (N,): raps, column 0; raps_randomized, column 0 plus u times column 1 (u drawn for each image,
    seed SEED); thr, 1 minus column 1.

    Raises:
        ValueError: a score other than raps of plain scores (they lack the probabilities it needs)."""
    if not supports(scores, score):
        raise ValueError(f"{score} needs the calibration images' probabilities, which these scores lack")
    if scores.dim() == 1:
        return scores.double()
    own = scores[:, 1].double()
    if score == "thr":
        return 1 - own
    u = uniform(len(scores), SEED).to(scores.device) if score == "raps_randomized" else 0
    return scores[:, 0].double() + u * own


def threshold(scores: torch.Tensor, coverage: float, score: str = "raps") -> float:
    """The threshold q for a coverage level: the k-th smallest of the n calibration values (calibration_values of
    `scores` and `score`, in any order), k = ceil((n + 1) * coverage), counted exactly on the level as the decimal it
    was written as (0.55, not 0.55000000000000004: 100 x 0.55 is 55.00000000000001 in floats). inf when k > n: too
    few calibration images for that level, and every class is in every set.

    Raises:
        ValueError: `scores` is empty (nothing was calibrated), `coverage` is not in (0, 1), or as
            calibration_values."""
    if not 0 < coverage < 1:
        raise ValueError(f"coverage {coverage} is not in (0, 1)")
    if len(scores) == 0:
        raise ValueError("no calibration scores")
    values = calibration_values(scores, score)
    k = math.ceil((len(values) + 1) * Fraction(repr(float(coverage))))
    return math.inf if k > len(values) else float(values.kthvalue(k).values)


def prediction_sets(
    probabilities: torch.Tensor, threshold: float, score: str = "raps", draws: torch.Tensor | None = None
) -> torch.Tensor:
    """Each image's set for a threshold (>= 0, of threshold() with the same `score`): bool (N, classes), True for
    the classes whose score is at most `threshold`. raps: the most probable class (score 0) is always in it;
    raps_randomized (each image's u in `draws`, float (N,), from image_draws) and thr (1 - the class's probability,
    in float64): a set may be empty.

    Raises:
        ValueError: raps_randomized without draws."""
    if score == "thr":
        return 1 - probabilities.double() <= threshold
    scores = class_scores(probabilities)
    if score == "raps_randomized":
        if draws is None:
            raise ValueError("raps_randomized sets need each image's draw u (image_draws)")
        scores = scores.double() + draws.to(probabilities.device, torch.float64)[:, None] * probabilities.double()
    return scores <= threshold


def coverage_report(
    probabilities: torch.Tensor,
    labels: torch.Tensor,
    scores: torch.Tensor,
    levels: list[float],
    score: str = "raps",
    draws: torch.Tensor | None = None,
) -> dict:
    """What the sets do on labelled images at each level: the share holding the true class (`empirical_coverage`),
    the mean number of classes (`mean_set_size`) and the share of empty sets (exact fractions: 33 of 40 is 0.825),
    with the threshold (null: every class), under `score` (raps_randomized: the images' `draws`). For metrics.json."""
    rows = []
    for level in levels:
        q = threshold(scores, level, score)
        sets = prediction_sets(probabilities, q, score, draws)
        rows.append(
            {
                "coverage": level,
                "threshold": None if math.isinf(q) else q,
                "empirical_coverage": int(sets.gather(1, labels[:, None]).sum()) / len(labels),
                "mean_set_size": int(sets.sum()) / len(labels),
                "empty_sets": int((sets.sum(dim=1) == 0).sum()) / len(labels),
            }
        )
    randomized = score == "raps_randomized"
    u = f"uniform: calibration images seed {SEED}, the others a hash of their pixels" if randomized else 0
    method = (
        {"method": "THR", "score": score, "randomized": False}
        if score == "thr"
        else {"method": "RAPS", "score": score, "lambda": LAMBDA, "k_reg": K_REG, "randomized": randomized, "u": u}
    )
    return {**method, "calibration_images": len(scores), "images": len(labels), "levels": rows}


def describe(report: dict) -> str:
    """The method of a `coverage_report` in a few words."""
    if report["method"] == "THR":
        return "THR: a class's score is 1 minus its probability (Sadinle et al., 2019), empty sets allowed"
    kind = "randomised, empty sets allowed" if report["randomized"] else "not randomised: u = 0"
    return f"RAPS (lambda {report['lambda']}, k_reg {report['k_reg']}, {kind})"


def markdown(report: dict) -> str:
    """report.md's section on the sets of `coverage_report`."""
    empty = report["score"] != "raps"  # the others' sets may be empty
    rows = [
        f"| {r['coverage']:.1%} | {r['empirical_coverage']:.2%} | {r['mean_set_size']:.2f} |"
        + (f" {r['empty_sets']:.2%} |" if empty else "")
        for r in report["levels"]
    ]
    return "\n".join(
        [
            "## Conformal prediction sets",
            "",
            f"{describe(report)}, calibrated on {report['calibration_images']:,} validation images; the guarantee "
            "holds when those and these images are exchangeable.",
            "",
            "| level | empirical coverage | mean set size |" + (" empty sets |" if empty else ""),
            "|---|---|---|" + ("---|" if empty else ""),
            *rows,
            "",
        ]
    )


def console_line(report: dict) -> str:
    """The console's one line on the sets of `coverage_report`."""
    levels = "; ".join(
        f"{r['coverage']:.1%}: coverage {r['empirical_coverage']:.2%}, mean size {r['mean_set_size']:.2f}"
        + (f", {r['empty_sets']:.1%} empty" if report["score"] != "raps" else "")
        for r in report["levels"]
    )
    kind = {"raps": "RAPS", "raps_randomized": "randomised RAPS", "thr": "THR"}[report["score"]]
    return f"conformal sets ({kind}, {report['calibration_images']:,} calibration images) {levels}"
