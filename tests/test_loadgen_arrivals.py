"""Arrival processes: mean rate and cv within tolerance over many draws; per-stream seeding; merging."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from gpufaas.loadgen import arrivals as ap
from gpufaas.loadgen.workload import StreamSpec, WorkloadSpec, arrivals
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.errors import SpecError
from gpufaas.platform.specs import parse

N = 50_000


def draw(gen, n: int = N) -> np.ndarray:
    return np.fromiter(itertools.islice(gen, n), dtype=float)


def cv(x: np.ndarray) -> float:
    return float(x.std() / x.mean())


@pytest.mark.parametrize("rate", [5.0, 200.0])
def test_poisson_mean_and_cv(rate):
    g = draw(ap.poisson_gaps(rate, np.random.default_rng(3)))
    assert 1 / g.mean() == pytest.approx(rate, rel=0.03)
    assert cv(g) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("c", [0.5, 2.0, 4.0])
def test_gamma_mean_and_cv(c):
    g = draw(ap.gamma_gaps(100.0, c, np.random.default_rng(5)))
    assert 1 / g.mean() == pytest.approx(100.0, rel=0.05 * c)
    assert cv(g) == pytest.approx(c, rel=0.08)


def test_constant_is_evenly_spaced_after_a_random_phase():
    g = draw(ap.constant_gaps(40.0, np.random.default_rng(1)), 1000)
    assert 0 <= g[0] < 1 / 40
    assert np.allclose(g[1:], 1 / 40)


def test_mmpp_on_off_mean_rate_and_burstiness():
    s = parse(StreamSpec, {"workflow": "w", "arrival": "mmpp", "rate_rps": 50, "mmpp_rates_rps": [0, 1], "mmpp_dwell_s": 2}, "t")
    g = draw(s.gaps(np.random.default_rng(11)), 200_000)
    assert 1 / g.mean() == pytest.approx(50.0, rel=0.1)
    assert cv(g) > 1.5  # off phases make gaps far more variable than Poisson


def test_per_stream_seeds_do_not_depend_on_other_streams():
    a = {"workflow": "a", "rate_rps": 10}
    one = WorkloadSpec(streams=[StreamSpec(**a)])
    two = WorkloadSpec(streams=[StreamSpec(**a), StreamSpec(workflow="b", rate_rps=30, arrival="gamma", cv=3)])
    t1 = [t for t, i in arrivals(one, 7, 20)]
    t2 = [t for t, i in arrivals(two, 7, 20) if i == 0]
    assert t1 == t2 and len(t1) > 100
    assert t1 != [t for t, _ in arrivals(one, 8, 20)]


def test_merged_arrivals_are_ordered_bounded_and_rates_add_up():
    wl = WorkloadSpec(streams=[StreamSpec(workflow="a", rate_rps=100), StreamSpec(workflow="b", rate_rps=50, start_s=10, duration_s=20)])
    out = list(arrivals(wl, 1, 60))
    ts = [t for t, _ in out]
    assert ts == sorted(ts) and ts[-1] < 60 * NS_PER_S
    b = [t for t, i in out if i == 1]
    assert min(b) >= 10 * NS_PER_S and max(b) < 30 * NS_PER_S
    assert len(b) == pytest.approx(1000, rel=0.1)
    assert sum(1 for _, i in out if i == 0) == pytest.approx(6000, rel=0.05)
    assert list(arrivals(wl, 1, 60, load=2.0)).__len__() == pytest.approx(2 * len(out), rel=0.05)


def test_bad_rates_are_one_line_errors():
    with pytest.raises(SpecError, match="rate_rps"):
        parse(WorkloadSpec, {"streams": [{"workflow": "a", "rate_rps": 0}]}, "w.yaml")
    with pytest.raises(SpecError, match="mmpp_rates_rps"):
        parse(WorkloadSpec, {"streams": [{"workflow": "a", "rate_rps": 1, "arrival": "mmpp", "mmpp_rates_rps": [0, 0]}]}, "w.yaml")
    with pytest.raises(SpecError, match="at least one stream"):
        parse(WorkloadSpec, {"streams": []}, "w.yaml")
