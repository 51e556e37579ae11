"""Is B better than A? Statistics for comparing two groups of classifiers (recipes, each run over seeds or folds).

- Seed level: `welch_interval`, the 95% Welch t interval for the difference of the groups' mean accuracies (one
  accuracy per run; the groups' variances are not assumed equal). The t quantile is computed here
  (`t_quantile`: the regularized incomplete beta function by its continued fraction, then bisection), so that
  scipy is not needed.
- Image level, on the same test images: `mcnemar_exact`, McNemar's test (Q. McNemar, "Note on the sampling error of
  the difference between correlated proportions or percentages", Psychometrika 12, 1947) in its exact form, a
  binomial test of the discordant pairs (images one classifier gets right and the other wrong), which
  T. G. Dietterich, "Approximate Statistical Tests for Comparing Supervised Classification Learning Algorithms"
  (Neural Computation 10(7), 1998) recommends for two classifiers tested once on the same images; and
  `paired_bootstrap`, a percentile bootstrap over images (resampled with replacement, the same images for both
  groups) of the difference of the groups' mean accuracies, with a fixed seed.

Accuracies are fractions in [0, 1]; differences are B - A.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz; Numerical Recipes,
    betacf). Converges fast for x < (a + 1) / (a + b + 2)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    result = d
    for m in range(1, 100_000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            result *= c * d
        if abs(c * d - 1.0) < eps:
            break
    return result


def incomplete_beta(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b), for a, b > 0 and x in [0, 1]."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t distribution with `df` > 0 degrees of freedom (not necessarily whole)."""
    tail = 0.5 * incomplete_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t with P(T <= t) = p, for p in (0, 1) and `df` > 0, by bisection on t_cdf (to ~1e-12 relative).

    Raises:
        ValueError: p outside (0, 1) or df not positive."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        middle = 0.5 * (low + high)
        if t_cdf(middle, df) < p:
            low = middle
        else:
            high = middle
        if high - low <= 1e-12 * high:
            break
    return 0.5 * (low + high)


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Interval:
    """Welch's t interval for mean(b) - mean(a) from the runs' accuracies of each group: the standard error
    sqrt(var_a / n_a + var_b / n_b) (sample variances), the Welch-Satterthwaite degrees of freedom, and the t
    quantile at (1 + level) / 2. Two groups without any spread give the difference itself as the interval (and
    df None): there is no spread to scale a quantile by.

    Raises:
        ValueError: a group of fewer than two runs (no variance to estimate)."""
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"a Welch interval needs two or more runs per group, got {len(a)} and {len(b)}")
    mean_a, std_a = mean_std(a)
    mean_b, std_b = mean_std(b)
    assert std_a is not None and std_b is not None  # two or more values each
    share_a, share_b = std_a**2 / len(a), std_b**2 / len(b)
    difference, se = mean_b - mean_a, math.sqrt(share_a + share_b)
    if se == 0.0:
        return Interval(difference, difference, difference, level)
    df = (share_a + share_b) ** 2 / (share_a**2 / (len(a) - 1) + share_b**2 / (len(b) - 1))
    half = t_quantile((1.0 + level) / 2.0, df) * se
    return Interval(difference, difference - half, difference + half, level, df)


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
    X ~ Binomial(n, 1/2), summed exactly in integers. 1 when there are no discordant images."""
    n = only_a + only_b
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


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
