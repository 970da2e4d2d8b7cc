"""Tolerances for float32 results, derived from the sums behind them rather than tuned.

Two float32 programs that add the same n terms in different orders (another XLA fusion,
vector width or reduction tree) each land within (n - 1) * eps32 / 2 * sum|term| of the
exact sum (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §4.2), so
they differ by at most

    n * eps32 * sum|term|,    eps32 = 2**-23 ~ 1.19e-7.

`terms` is n, the length of the longest sum behind the compared values (a dot of K
products counts K; an exp, a log or a division counts one, for its rounding); the
magnitude is sum|term|, by default the largest |expected|, which is sum|term| when the
terms share a sign and less when they cancel: pass the real one then. Values that must
be bit-equal (the same program, copies, small integers) are compared with
np.testing.assert_array_equal instead.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

EPS32 = float(np.finfo(np.float32).eps)


def f32_tolerance(terms: int, magnitude: ArrayLike) -> np.ndarray | float:
    """The largest difference two float32 orders of a sum of `terms` terms can produce.

    Args:
        terms: how many terms the longest sum behind the values adds.
        magnitude: sum of |term| of that sum: a number, or an array of one per value.

    Returns:
        terms * eps32 * magnitude.
    """
    return terms * EPS32 * np.asarray(magnitude, np.float64)


def assert_close(
    actual: ArrayLike,
    expected: ArrayLike,
    *,
    terms: int,
    why: str,
    magnitude: ArrayLike | None = None,
) -> None:
    """Asserts |actual - expected| <= f32_tolerance(terms, magnitude) for every value.

    Args:
        actual: the values under test.
        expected: the reference, of actual's shape or a scalar.
        terms: how many terms the longest sum behind the values adds.
        why: which sums those are; the failure message starts with it.
        magnitude: sum of |term|, one number or one per value; default max |expected|.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    if expected.ndim and actual.shape != expected.shape:
        raise AssertionError(f"{why}: shape {actual.shape}, expected {expected.shape}")
    scale = np.abs(expected).max(initial=0.0) if magnitude is None else magnitude
    bound = np.broadcast_to(f32_tolerance(terms, scale), actual.shape)
    error = np.abs(actual - expected)
    bad = ~(error <= bound)  # NaN is bad
    if bad.any():
        worst = np.unravel_index(np.argmax(np.where(bad, error - bound, -np.inf)), bad.shape)
        want = np.broadcast_to(expected, actual.shape)[worst]
        raise AssertionError(
            f"{why}: {int(bad.sum())} of {bad.size} values differ by more than "
            f"{terms} * eps32 * magnitude; at {tuple(map(int, worst))}: {actual[worst]:.9g} "
            f"against {want:.9g}, a difference of {error[worst]:.3g} > {bound[worst]:.3g}"
        )
