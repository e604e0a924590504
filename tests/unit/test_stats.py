"""monitor.stats against published values (Newcombe 1998) and scipy (reference only, never at run time)."""

from __future__ import annotations

import math

import pytest

from monitor.stats import diff_interval, two_proportion_test, wilson_interval

# Newcombe RG (1998), "Interval estimation for the difference between independent proportions:
# comparison of eleven methods", Stat Med 17:873-890, Table II, method 10 (hybrid score), 4 decimals.
NEWCOMBE_DIFF = [
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
    ((6, 7, 2, 7), (0.0582, 0.8062)),
    ((5, 56, 0, 29), (-0.0381, 0.1926)),
    ((0, 10, 0, 20), (-0.1611, 0.2775)),
    ((0, 10, 0, 10), (-0.2775, 0.2775)),
    ((10, 10, 0, 20), (0.6791, 1.0000)),
    ((10, 10, 0, 10), (0.6075, 1.0000)),
]

# Newcombe RG (1998), "Two-sided confidence intervals for the single proportion", Stat Med 17:857-872,
# Table I, method 3 (Wilson score without continuity correction).
NEWCOMBE_SINGLE = [
    ((81, 263), (0.2553, 0.3662)),
    ((15, 148), (0.0624, 0.1605)),
    ((0, 20), (0.0000, 0.1611)),
    ((1, 29), (0.0061, 0.1718)),
]


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_DIFF)
def test_diff_interval_matches_newcombe_table(counts: tuple[int, int, int, int],
                                              expected: tuple[float, float]) -> None:
    lo, hi = diff_interval(*counts)
    assert lo == pytest.approx(expected[0], abs=6e-5)
    assert hi == pytest.approx(expected[1], abs=6e-5)


@pytest.mark.parametrize(("counts", "expected"), NEWCOMBE_SINGLE)
def test_wilson_matches_newcombe_table(counts: tuple[int, int], expected: tuple[float, float]) -> None:
    lo, hi = wilson_interval(*counts)
    assert lo == pytest.approx(expected[0], abs=6e-5)
    assert hi == pytest.approx(expected[1], abs=6e-5)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 40), (17, 300), (250, 500), (999, 1000)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    stats = pytest.importorskip("scipy.stats")
    z = float(stats.norm.ppf(0.975))
    ref = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = wilson_interval(k, n, z=z)
    assert lo == pytest.approx(ref.low, abs=1e-9)
    assert hi == pytest.approx(ref.high, abs=1e-9)


def test_wilson_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 50)[0] == 0.0
    assert wilson_interval(50, 50)[1] == 1.0
    lo, hi = wilson_interval(5, 100)
    assert 0.0 < lo < 0.05 < hi < 1.0
    with pytest.raises(ValueError):
        wilson_interval(3, 2)
    with pytest.raises(ValueError):
        wilson_interval(-1, 2)


@pytest.mark.parametrize("counts", [(10, 100, 20, 100), (3, 200, 40, 220), (50, 60, 45, 70), (1, 5, 4, 5)])
def test_two_proportion_matches_uncorrected_chi_square(counts: tuple[int, int, int, int]) -> None:
    stats = pytest.importorskip("scipy.stats")
    k1, n1, k2, n2 = counts
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    _, ref_p, _, _ = stats.chi2_contingency(table, correction=False)
    assert two_proportion_test(*counts) == pytest.approx(ref_p, rel=1e-9)


def test_two_proportion_known_value_and_edges() -> None:
    # 10/100 vs 20/100: pooled p = 0.15, z = -0.1 / sqrt(0.15*0.85*0.02) = -1.980295..., p = 0.047676...
    z = 0.1 / math.sqrt(0.15 * 0.85 * 0.02)
    assert two_proportion_test(10, 100, 20, 100) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-12)
    assert two_proportion_test(10, 100, 20, 100) == pytest.approx(0.04767, abs=1e-5)
    assert two_proportion_test(0, 10, 0, 20) == 1.0
    assert two_proportion_test(10, 10, 20, 20) == 1.0
    assert two_proportion_test(0, 0, 3, 10) == 1.0
    assert two_proportion_test(5, 10, 5, 10) == pytest.approx(1.0)


def test_diff_interval_contains_point_estimate_and_is_symmetric() -> None:
    lo, hi = diff_interval(30, 200, 12, 210)
    assert lo < 30 / 200 - 12 / 210 < hi
    lo2, hi2 = diff_interval(12, 210, 30, 200)
    assert lo2 == pytest.approx(-hi)
    assert hi2 == pytest.approx(-lo)
