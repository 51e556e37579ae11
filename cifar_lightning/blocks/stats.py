"""Is B better than A? Statistics for comparing two groups of classifiers (recipes, each run over seeds or folds).

- Seed level: `welch_interval`, the 95% Welch t interval for the difference of the groups' mean accuracies (one
  accuracy per run; the groups' variances are not assumed equal), by scipy.stats.ttest_ind.
- Image level, on the same test images: `mcnemar_exact`, McNemar's test (Q. McNemar, "Note on the sampling error of
  the difference between correlated proportions or percentages", Psychometrika 12, 1947) in its exact form, a
  binomial test (scipy.stats.binomtest) of the discordant pairs (images one classifier gets right and the other
  wrong), which T. G. Dietterich, "Approximate Statistical Tests for Comparing Supervised Classification Learning
  Algorithms" (Neural Computation 10(7), 1998) recommends for two classifiers tested once on the same images; and
  `paired_bootstrap`, a percentile bootstrap over images (resampled with replacement, the same images for both
  groups) of the difference of the groups' mean accuracies, with a fixed seed.

Accuracies are fractions in [0, 1]; differences are B - A.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike


@dataclass(frozen=True)
class Interval:
    """A difference B - A and its confidence interval [low, high] at `level`; `df`: the Welch degrees of freedom
    (None for the bootstrap)."""

    difference: float
    low: float
    high: float
    level: float
    df: float | None = None

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1 in the denominator; None for a single value).

    Raises:
        ValueError: no values."""
    if len(values) == 0:
        raise ValueError("mean_std of no values")
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else None


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Welch's t interval for mean(b) - mean(a) from the runs' accuracies of each group: the standard error
    sqrt(var_a / n_a + var_b / n_b) (sample variances), the Welch-Satterthwaite degrees of freedom, and the t
    quantile at (1 + level) / 2 (scipy.stats.ttest_ind, equal_var=False). Two groups without any spread give the
    difference itself as the interval (and df None): there is no spread to scale a quantile by.

    Raises:
        ValueError: a group of fewer than two runs (no variance to estimate)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Welch interval needs two or more runs per group, got {len(a)} and {len(b)}")
    difference = mean_std(b)[0] - mean_std(a)[0]
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return Interval(difference, difference, difference, level)
    test = scipy.stats.ttest_ind(b, a, equal_var=False)
    interval = test.confidence_interval(level)
    return Interval(difference, float(interval.low), float(interval.high), level, float(test.df))


def discordant(a_correct: ArrayLike, b_correct: ArrayLike) -> tuple[int, int]:
    """The discordant pairs of two classifiers on the same images: (images only A gets right, images only B gets
    right).

    Raises:
        ValueError: the two do not cover the same number of images."""
    a, b = np.asarray(a_correct, dtype=bool), np.asarray(b_correct, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions need the same images, got {a.shape} and {b.shape}")
    return int((a & ~b).sum()), int((~a & b).sum())


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """McNemar's exact two-sided p-value: under the null hypothesis each of the n = only_a + only_b discordant
    images favours either classifier with probability 1/2, so p = min(1, 2 P(X <= min(only_a, only_b))) for
    X ~ Binomial(n, 1/2) (scipy.stats.binomtest). 1 when there are no discordant images."""
    n = only_a + only_b
    return float(scipy.stats.binomtest(min(only_a, only_b), n, 0.5).pvalue) if n else 1.0


def paired_bootstrap(
    a_correct: ArrayLike, b_correct: ArrayLike, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """The percentile bootstrap interval over images of mean accuracy(B) - mean accuracy(A): `a_correct` is
    (runs of A, images) or (images,) of whether each run got each image right, `b_correct` likewise on the same
    images. Each resample draws the images with replacement (the same draw for both groups: the pairing) and takes
    the difference of the groups' mean accuracies on it; `seed` fixes the draws.

    Raises:
        ValueError: no images, or the groups not on the same number of images."""
    a = np.atleast_2d(np.asarray(a_correct, dtype=float)).mean(axis=0)
    b = np.atleast_2d(np.asarray(b_correct, dtype=float)).mean(axis=0)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a paired bootstrap needs the same images for both groups, got {a.size} and {b.size}")
    per_image = b - a  # the mean over the runs of a group first: an image's difference in mean accuracy
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    chunk = max(1, 2**22 // per_image.size)  # index arrays of ~32 MB at a time
    for start in range(0, resamples, chunk):
        draws = rng.integers(0, per_image.size, size=(min(chunk, resamples - start), per_image.size))
        differences[start : start + len(draws)] = per_image[draws].mean(axis=1)
    low, high = np.quantile(differences, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return Interval(float(per_image.mean()), float(low), float(high), level)
