"""ESG_1Q's A*-search against the exhaustive oracle and literal enumeration (hypothesis properties), the
adaptive open-list window, and inter-stage transfer time."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufaas.platform.policy import search as S


@st.composite
def problems(draw, max_stages: int = 4, max_options: int = 5):
    """A small random search problem (chain or single-root DAG, some stages with an input transfer) and a budget."""
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
        stages.append(S.StageTable(opts, preds, fill if i else 0, draw(st.sampled_from([0, 0, 4]))))
    return stages, draw(st.integers(5, 150))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problems())
def test_pruning_never_discards_the_optimum(case):
    problem, budget = case
    exact = S.brute_force(problem, budget)
    for r in (S.astar(problem, budget, 0.0), S.oracle(problem, budget), S.astar(problem, budget, 0.0, blades=False),
              S.astar(problem, budget, 0.0, adaptive=False)):
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


def test_transfer_time_counts_against_the_budget():
    # the child's cheap option fits the budget only while its input transfer is left out
    root = S.StageTable((S.Option(1.0, 10, 1, 1),))
    child = (S.Option(1.0, 30, 1, 1), S.Option(5.0, 10, 1, 1))
    without = [root, S.StageTable(child, (0,))]
    with_xfer = [root, S.StageTable(child, (0,), transfer_ns=10)]
    assert S.astar(without, 45).choice == (0, 0)
    assert S.path_latency(with_xfer, (0, 0)) == 50
    for search in (S.astar, S.oracle, S.brute_force):
        r = search(with_xfer, 45)
        assert r.choice == (0, 1) and r.cost == 6.0 and r.latency_ns == 30
    assert S.astar(with_xfer, 25).choice is None


# a chain (cost, time) per option; budget 84: many partial paths lie within 10% of the lowest f
WINDOW_CASE = [[(38, 8), (60, 24), (18, 21)], [(33, 21), (44, 23), (48, 14), (37, 18)], [(40, 12), (43, 9)],
               [(60, 1), (29, 26), (52, 5)], [(49, 24), (32, 5), (18, 17), (38, 12)], [(26, 27), (40, 26), (32, 17), (54, 13)]]


def test_adaptive_window_dives_within_epsilon_and_shuts_at_zero():
    problem = [S.StageTable(tuple(S.Option(c, t, 1, 1) for c, t in opts), (i - 1,) if i else ())
               for i, opts in enumerate(WINDOW_CASE)]
    exact = S.oracle(problem, 84)
    plain = S.astar(problem, 84, 0.1, adaptive=False)
    assert plain.cost == exact.cost and plain.dives == 0
    # the window opens to (1 + epsilon): the search dives to a path within it and stops sooner
    r = S.astar(problem, 84, 0.1)
    assert r.dives > 0 and r.nodes_expanded < plain.nodes_expanded
    assert exact.cost <= r.cost <= 1.1 * exact.cost
    # epsilon = 0: the window stays shut and the search exact
    r0 = S.astar(problem, 84, 0.0)
    assert r0.dives == 0 and r0.cost == exact.cost


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
