"""blocks/stats.py against direct computations: McNemar's exact test, Welch's interval and the paired bootstrap."""

import math
import statistics

import numpy as np
import pytest
import scipy.stats

from cifar_lightning.blocks.stats import (
    discordant,
    mcnemar_exact,
    mean_std,
    paired_bootstrap,
    welch_interval,
)


def test_mcnemar_on_a_hand_made_table():
    # A right and B wrong on 2 images, B right and A wrong on 10: two-sided exact p = 2 P(X <= 2), X ~ Bin(12, 1/2)
    by_hand = 2 * (math.comb(12, 0) + math.comb(12, 1) + math.comb(12, 2)) / 2**12
    assert by_hand == pytest.approx(0.0385742, abs=1e-7)
    assert mcnemar_exact(2, 10) == pytest.approx(by_hand, rel=1e-12)
    assert mcnemar_exact(10, 2) == mcnemar_exact(2, 10)  # two-sided: the order does not matter
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 2**5)
    assert mcnemar_exact(0, 0) == 1.0  # no discordant image: no evidence either way
    assert mcnemar_exact(7, 7) == 1.0  # 2 P(X <= 7) > 1 for X ~ Bin(14, 1/2): capped
    # thousands of discordant images: exact in integers, no overflow, a tiny but positive p
    assert 0 < mcnemar_exact(900, 1100) < 1e-5


def test_discordant_counts_each_cell_of_the_table():
    a = [True, True, False, False, True, False]
    b = [True, False, True, True, True, False]
    assert discordant(a, b) == (1, 2)  # image 1 only A, images 2 and 3 only B
    with pytest.raises(ValueError, match="same images"):
        discordant([True], [True, False])


def test_welch_interval_equals_a_hand_computation():
    # equal sizes and variances: Welch's df is n_a + n_b - 2 = 2 exactly, whose t quantile has a closed form
    a, b = [0.80, 0.82], [0.85, 0.87]
    se = math.sqrt(statistics.variance(a) / 2 + statistics.variance(b) / 2)
    half = 0.95 * math.sqrt(2 / (1 - 0.95**2)) * se  # t_{0.975, 2} = 4.3027
    interval = welch_interval(a, b)
    assert interval.difference == pytest.approx(0.05)
    assert interval.df == pytest.approx(2.0)
    assert (interval.low, interval.high) == pytest.approx((0.05 - half, 0.05 + half))
    assert interval.contains(0.0)  # two runs each, 2 points apart: not enough to tell


def test_welch_interval_with_unequal_groups():
    a, b = [0.801, 0.812, 0.806], [0.831, 0.842, 0.836, 0.829, 0.851]
    va, vb = statistics.variance(a) / 3, statistics.variance(b) / 5
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 4)
    interval = welch_interval(a, b)
    assert interval.df == pytest.approx(df)
    half = scipy.stats.t.ppf(0.975, df) * math.sqrt(va + vb)  # df = 5.92: t lies between the tables' 2.571 and 2.447
    assert 2.447 < scipy.stats.t.ppf(0.975, df) < 2.571
    difference = statistics.mean(b) - statistics.mean(a)
    assert (interval.difference, interval.low, interval.high) == pytest.approx(
        (difference, difference - half, difference + half)
    )
    assert interval.low > 0  # 3 points apart with well under a point of spread: B is better


def test_welch_interval_edge_cases():
    with pytest.raises(ValueError, match="two or more runs"):
        welch_interval([0.8], [0.8, 0.9])
    same = welch_interval([0.8, 0.8], [0.9, 0.9])  # no spread at all: the interval is the difference
    assert (same.low, same.high, same.df) == pytest.approx((0.1, 0.1, None))
    assert mean_std([0.5]) == (0.5, None)
    assert mean_std([0.4, 0.6]) == pytest.approx((0.5, math.sqrt(0.02)))


def test_paired_bootstrap_of_identical_groups_is_zero():
    correct = np.random.default_rng(1).random((3, 500)) < 0.7
    interval = paired_bootstrap(correct, correct.copy())
    assert (interval.difference, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.contains(0.0)


def test_paired_bootstrap_equals_the_binomial_spread():
    # B right on every image, A on a random half: the per-image difference is 1 on half the images, so the
    # resampled mean has the binomial spread sqrt(p (1 - p) / n) around p (normal approximation, n = 2,000)
    n = 2000
    a = np.zeros(n, dtype=bool)
    a[np.random.default_rng(0).permutation(n)[: n // 2]] = True
    interval = paired_bootstrap(a, np.ones(n, dtype=bool), resamples=2000, seed=3)
    half = 1.959964 * math.sqrt(0.25 / n)
    assert interval.difference == pytest.approx(0.5)
    assert interval.low == pytest.approx(0.5 - half, abs=0.004)
    assert interval.high == pytest.approx(0.5 + half, abs=0.004)
    # the seed fixes the draws; groups of several runs count by their mean accuracy per image
    assert paired_bootstrap(a, np.ones(n, dtype=bool), resamples=2000, seed=3) == interval
    two_runs = paired_bootstrap(np.stack([a, a]), np.ones((2, n), dtype=bool), resamples=2000, seed=3)
    assert two_runs == interval
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(a, np.ones(n + 1, dtype=bool))
