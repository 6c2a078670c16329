"""ESG_1Q's A*-search against the exhaustive oracle and literal enumeration (hypothesis properties)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufaas.platform.policy import search as S


@st.composite
def problems(draw, max_stages: int = 4, max_options: int = 5):
    """A small random search problem (chain or single-root DAG) and a budget."""
    n = draw(st.integers(1, max_stages))
    fill = draw(st.sampled_from([0, 0, 3, 10]))
    stages = []
    for i in range(n):
        opts = tuple(S.Option(draw(st.integers(1, 60)) / 10, draw(st.integers(1, 50)), draw(st.sampled_from([1, 2, 4, 8])), 1)
                     for _ in range(draw(st.integers(1, max_options))))
        if i == 0:
            preds = ()
        else:
            preds = tuple(sorted(draw(st.sets(st.integers(0, i - 1), min_size=1, max_size=min(2, i)))))
        stages.append(S.StageTable(opts, preds, fill if i else 0))
    return stages, draw(st.integers(5, 150))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_pruning_never_discards_the_optimum(case):
    problem, budget = case
    exact = S.brute_force(problem, budget)
    for r in (S.astar(problem, budget, 0.0), S.oracle(problem, budget), S.astar(problem, budget, 0.0, blades=False)):
        assert (r.choice is None) == (exact.choice is None)
        if r.choice is not None:
            assert r.cost == pytest.approx(exact.cost)
            assert S.path_latency(problem, r.choice) <= budget
            assert S.path_cost(problem, r.choice) == pytest.approx(r.cost)
            assert r.latency_ns == S.path_latency(problem, r.choice)


@settings(max_examples=200, deadline=None)
@given(problems(), st.sampled_from([0.01, 0.1, 0.5]))
def test_epsilon_stop_stays_within_its_bound(case, eps):
    problem, budget = case
    exact = S.oracle(problem, budget)
    r = S.astar(problem, budget, eps)
    assert (r.choice is None) == (exact.choice is None)
    if r.choice is not None:
        assert S.path_latency(problem, r.choice) <= budget
        assert r.cost <= exact.cost * (1 + eps) + 1e-9


def test_fill_wait_couples_downstream_batch_to_root_batch():
    # root: batch 1 or 4 (same cost/time); child: batch 4 is much cheaper but waits 3 items x 10 ns behind a batch-1 root
    root = S.StageTable((S.Option(1.0, 10, 1, 1), S.Option(1.0, 10, 4, 1)))
    child = S.StageTable((S.Option(5.0, 10, 1, 1), S.Option(1.0, 10, 4, 1)), (0,), 10)
    r = S.astar([root, child], 20)
    assert r.choice == (1, 1) and r.cost == 2.0
    assert S.path_latency([root, child], (0, 1)) == 50


def test_blades_cut_work_and_are_counted():
    opts = tuple(S.Option(c / 10, t, b, 1) for c, t, b in [(10, 5, 1), (8, 8, 2), (6, 12, 4), (4, 20, 8), (3, 40, 16), (12, 4, 1)])
    problem = [S.StageTable(opts)] + [S.StageTable(opts, (i,)) for i in range(4)]
    with_b = S.astar(problem, 70)
    without = S.astar(problem, 70, blades=False)
    assert with_b.cost == pytest.approx(without.cost)
    assert with_b.pruned > 0 and without.pruned == 0
    assert with_b.nodes_expanded < without.nodes_expanded


def test_bad_problems_are_refused():
    o = (S.Option(1.0, 1, 1, 1),)
    with pytest.raises(ValueError, match="stage 0 must be the root"):
        S.astar([S.StageTable(o, (0,))], 10)
    with pytest.raises(ValueError, match="stage 1 must have predecessors"):
        S.oracle([S.StageTable(o), S.StageTable(o)], 10)
    assert S.astar([S.StageTable(o)], 0).choice is None
