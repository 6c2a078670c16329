"""Dominator-based segmentation and the SLO split, on hand-built DAGs."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpufaas.platform.policy.slo import dominator_chain, make_plan, segments, split_budget, stage_budget_ns

CHAIN = [(), (0,), (1,), (2,)]
DIAMOND = [(), (0,), (0,), (1, 2)]  # a -> {b, c} -> d
# a -> {b, c}; b -> {d, e} -> f; {c, f} -> g
NESTED = [(), (0,), (0,), (1,), (1,), (3, 4), (2, 5)]
TWO_ENTRIES = [(), (), (0, 1), (2,)]  # {x, y} -> z -> w
VIDEO = [(), (0,), (1,), (1,), (1,), (2, 3, 4)]  # decode, detect, {classify, attributes, scene}, fuse


def test_chain_every_stage_is_a_dominator_and_its_own_segment():
    assert dominator_chain(CHAIN) == [0, 1, 2, 3]
    assert segments(CHAIN) == [(0,), (1,), (2,), (3,)]


def test_diamond_branches_belong_to_the_fork_segment():
    assert dominator_chain(DIAMOND) == [0, 3]
    assert segments(DIAMOND) == [(0, 1, 2), (3,)]


def test_nested_fan_out_inner_dominator_is_not_a_cut():
    # b dominates d, e, f but not the sink (c bypasses it): only a and g cut the workflow
    assert dominator_chain(NESTED) == [0, 6]
    assert segments(NESTED) == [(0, 1, 2, 3, 4, 5), (6,)]


def test_several_entries_form_a_leading_segment():
    assert dominator_chain(TWO_ENTRIES) == [2, 3]
    assert segments(TWO_ENTRIES) == [(0, 1), (2,), (3,)]


def test_video_dag_segments_and_search_scope():
    plan = make_plan(VIDEO, [1, 10, 8, 3, 12, 1])
    assert plan.segments == ((0,), (1, 2, 3, 4), (5,))
    assert plan.weights_ns == (1, 22, 1)  # detect + the slowest parallel branch (scene)
    assert plan.scope[1] == (1, 2, 3, 4) and plan.scope[3] == (3,)
    assert plan.rest_ns[1] == 22 and plan.rest_ns[2] == 8 and plan.later_ns[1] == 1


@given(st.integers(0, 10**12), st.lists(st.integers(0, 10**9), min_size=1, max_size=12))
def test_split_sums_to_the_budget(budget, weights):
    parts = split_budget(budget, weights)
    assert sum(parts) == budget and len(parts) == len(weights) and all(p >= 0 for p in parts)
    if sum(weights) > 0:
        # proportional within rounding (integer division, the remainder goes to the last segment)
        for p, w in zip(parts[:-1], weights[:-1]):
            assert abs(p - budget * w / sum(weights)) <= 1


def test_segment_split_of_a_workflow_sums_to_its_slo():
    plan = make_plan(VIDEO, [2, 30, 25, 10, 40, 3])
    slo = 300_000_000
    parts = split_budget(slo, list(plan.weights_ns))
    assert sum(parts) == slo and parts[1] > parts[0] and parts[1] > parts[2]


def test_budgets_follow_the_time_actually_left():
    plan = make_plan(CHAIN, [10, 20, 30, 40])
    # at the first stage with the whole SLO: its share of the nominal total
    assert stage_budget_ns(plan, 0, 1000) == 100
    # slack from a fast start flows downstream: stage 1 gets 20/90 of what is left
    assert stage_budget_ns(plan, 1, 990) == 990 * 20 // 90
    # an overrun is absorbed: less time left, smaller budgets, never more than the time left
    assert stage_budget_ns(plan, 3, 30) == 30
    assert stage_budget_ns(plan, 2, -5) == 0
