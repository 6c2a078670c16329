"""The one quantile definition (platform/stats.py) agrees with numpy.percentile's default, and the
accounting's streaming histogram estimates that same quantile within its stated error."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gpufaas.platform.accounting import Histogram
from gpufaas.platform.stats import quantile, quantiles, rank

_values = st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False), min_size=1, max_size=200)
_q = st.floats(min_value=0.0, max_value=1.0)


@given(_values, _q)
def test_quantile_agrees_with_numpy_percentile(values, q):
    want = float(np.percentile(values, q * 100))
    got = quantile(values, q)
    scale = max(1.0, max(abs(v) for v in values))
    assert math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9 * scale), (got, want)
    assert min(values) <= got <= max(values)


@given(_values, st.lists(_q, min_size=1, max_size=5))
def test_quantiles_is_quantile_per_q(values, qs):
    assert quantiles(values, qs) == [quantile(values, q) for q in qs]


def test_quantile_extremes_and_bad_input():
    xs = [5.0, 1.0, 3.0, 2.0]
    assert quantile(xs, 0.0) == 1.0 and quantile(xs, 1.0) == 5.0 and quantile(xs, 0.5) == 2.5
    assert rank(4, 0.5) == (1, 0.5) and rank(1, 0.99) == (0, 0.0)
    with pytest.raises(ValueError, match="no values"):
        quantile([], 0.5)
    with pytest.raises(ValueError, match=r"q=1.5 is outside \[0, 1\]"):
        quantile(xs, 1.5)


@settings(max_examples=60)
@given(st.lists(st.floats(min_value=1.0, max_value=1e9, allow_nan=False), min_size=1, max_size=300), _q)
def test_histogram_estimates_the_same_quantile_within_one_percent(values, q):
    """Each order statistic is read as its bucket's geometric middle (<= 1% off) and the extremes exactly,
    so the interpolated quantile is within 1% of numpy's."""
    h = Histogram()
    for v in values:
        h.add(v)
    want = float(np.percentile(values, q * 100))
    assert abs(h.quantile(q) - want) <= 0.01 * want + 1e-9, (h.quantile(q), want)
    assert h.quantile(0.0) == min(values) and h.quantile(1.0) == max(values)


def test_histogram_count_le_matches_its_buckets():
    h = Histogram()
    for v in (0.5, 1.0, 10.0, 10.1, 100.0, 1000.0):
        h.add(v)
    assert h.count_le(-1) == 0 and h.count_le(0.9) == 1 and h.count_le(math.inf) == 6
    assert h.count_le(50.0) == 4 and h.count_le(100.0) == 5 and h.count_le(1e6) == 6
    assert h.count_le(10.0) == 4  # 10.0 and 10.1 share a 2% bucket: both count as <= 10.0
    assert Histogram().quantile(0.5) == 0.0
