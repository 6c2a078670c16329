"""Quantiles: the one definition every percentile the project reports follows.

Method: linear interpolation between the two closest order statistics, numpy.percentile's default
(`method="linear"`; Hyndman & Fan 1996, definition 7; also R's default and `statistics.median` at 0.5).
For n values sorted as x[0] <= ... <= x[n-1] and q in [0, 1]: h = (n - 1) q, k = floor(h), and the
q-quantile is x[k] + (h - k) (x[k+1] - x[k]); q = 0 gives the minimum, q = 1 the maximum.

Who calls it: reports over exact samples (benches, the live run's report) use `quantile`/`quantiles`;
`accounting.Histogram` estimates the same quantile over a stream through `rank`. Pure functions: they
change nothing.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence


def rank(n: int, q: float) -> tuple[int, float]:
    """(k, frac): the q-quantile of n sorted values is x[k] + frac (x[k+1] - x[k]); frac is 0 when k = n - 1.

    ValueError when n < 1 or q lies outside [0, 1]."""
    if n < 1:
        raise ValueError("quantile of no values")
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile q={q} is outside [0, 1]")
    h = (n - 1) * q
    k = min(int(math.floor(h)), n - 1)
    return k, (h - k if k < n - 1 else 0.0)


def _at(xs: Sequence[float], q: float) -> float:
    k, frac = rank(len(xs), q)
    lo = float(xs[k])
    return lo + frac * (float(xs[k + 1]) - lo) if frac else lo


def quantile(values: Iterable[float], q: float) -> float:
    """The q-quantile (q in [0, 1]) of `values` by linear interpolation (see the module docstring).

    ValueError when `values` is empty or q lies outside [0, 1]."""
    return _at(sorted(values), q)


def quantiles(values: Iterable[float], qs: Iterable[float]) -> list[float]:
    """`quantile(values, q)` for each q in `qs`, sorting `values` once."""
    xs = sorted(values)
    return [_at(xs, q) for q in qs]


def quantile_upper_bound(values: Iterable[float], q: float, confidence: float = 0.975) -> float:
    """A distribution-free upper confidence bound on the q-quantile of the population `values` were drawn
    from: the smallest order statistic x[k] with P(Binomial(n, q) <= k) >= `confidence` (the number of
    draws below the q-quantile is Binomial(n, q)); the maximum when n is too small for that.

    Who calls it: `gpufaas bench soak` (is latency back to its idle figure?), so that a window is compared
    with what the idle phase could have shown, not with one noisy point estimate. ValueError when `values`
    is empty or q lies outside [0, 1]."""
    xs = sorted(values)
    n = len(xs)
    rank(n, q)  # the same argument checks as `quantile`
    if q in (0.0, 1.0):
        return float(xs[0] if q == 0.0 else xs[-1])
    cdf = 0.0
    log_n = math.lgamma(n + 1)
    for k in range(n):  # the binomial pmf in logs: comb(n, k) overflows a float past n ~ 1,000
        cdf += math.exp(log_n - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(q) + (n - k) * math.log1p(-q))
        if cdf >= confidence:
            return float(xs[k])
    return float(xs[-1])
