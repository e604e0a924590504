"""Small, dependency-free statistics for failure rates (binomial proportions).

Why these methods: EM rates are small (a few percent) and samples are modest (hundreds), where the
textbook Wald interval collapses to zero width or dips below 0. Wilson's score interval stays inside
[0, 1] and keeps close to nominal coverage; Newcombe's hybrid score interval (his method 10) carries that
behaviour over to a difference of two rates. The pooled two-proportion z-test matches the chi-square test
without continuity correction. Pure Python (``math`` only) so the sidecar never needs scipy at run time.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["wilson_interval", "two_proportion_test", "diff_interval"]


def _check(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n``; ``(0.0, 1.0)`` when ``n == 0`` (no data)."""
    _check(k, n)
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = (z / denom) * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n))
    lo = max(0.0, centre - half)
    hi = min(1.0, centre + half)
    # Exact endpoints at the boundaries (floating error would otherwise leave e.g. 1e-17).
    if k == 0:
        lo = 0.0
    if k == n:
        hi = 1.0
    return (lo, hi)


def two_proportion_test(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled z-test for ``k1/n1 == k2/n2``.

    Returns 1.0 when the test is undefined (an empty group, or both rates 0 or both 1): there is then
    no evidence of a difference, and a gate must not fail on it.
    """
    _check(k1, n1)
    _check(k2, n2)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = (k1 + k2) / (n1 + n2)
    var = pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)
    if var <= 0.0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / math.sqrt(var)
    return min(1.0, math.erfc(abs(z) / math.sqrt(2.0)))


def diff_interval(k1: int, n1: int, k2: int, n2: int, z: float = 1.96) -> tuple[float, float]:
    """Newcombe hybrid score interval for ``p1 - p2`` (method 10, Newcombe 1998), clipped to [-1, 1]."""
    _check(k1, n1)
    _check(k2, n2)
    p1 = k1 / n1 if n1 else 0.0
    p2 = k2 / n2 if n2 else 0.0
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return (max(-1.0, lo), min(1.0, hi))


def sigmoid(x: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise; inputs clipped to +-30 so float32 logits never overflow ``exp``
    (the result differs from the unclipped one by < 1e-13). The one copy: framing scores and the scorer's
    Platt calibration both use it."""
    return 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))
