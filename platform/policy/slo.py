"""Dominator-based SLO distribution (ESG, DESIGN section 4.1). Pure functions over stage indices.

A workflow is given as `preds[i]`: the predecessors of stage i, stages in topological order. A virtual
source feeds the entry stages and the exit stages feed a virtual sink; the dominators of the sink
(networkx immediate dominators from the source) are the stages every request passes through, in order.
They cut the DAG into *segments*: segment k holds dominator k and every stage it dominates that the next
dominator does not (so a dominator heads its segment, and parallel branches between two dominators
belong to the earlier one's segment); stages before the first dominator (several entries) form a
segment of their own.

The end-to-end budget is split across segments in proportion to each segment's critical-path latency
at the workflow's cheapest SLO-feasible configuration (the `nominal_ns` per stage, found by the same
A*-search the policy uses). At run time `stage_budget_ns()` recomputes the split from the time actually
left, so slack flows downstream and overruns are absorbed by later segments.

Who calls it: `policy/esg.py` (once per deployed workflow, then per decision), tests. Changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

_SRC = -1
_SINK = -2


def dominator_chain(preds: list[tuple[int, ...]]) -> list[int]:
    """The stages that dominate the virtual sink, in order from the entry side (the virtual ends excluded)."""
    n = len(preds)
    g = nx.DiGraph()
    g.add_nodes_from(range(n))
    has_succ = [False] * n
    for i, ps in enumerate(preds):
        if not ps:
            g.add_edge(_SRC, i)
        for p in ps:
            g.add_edge(p, i)
            has_succ[p] = True
    for i in range(n):
        if not has_succ[i]:
            g.add_edge(i, _SINK)
    idom = nx.immediate_dominators(g, _SRC)
    chain = []
    v = idom[_SINK]
    while v != _SRC:
        chain.append(v)
        v = idom[v]
    chain.reverse()
    return chain


def segments(preds: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The segments, in order, each a tuple of stage indices in topological order (see module docstring)."""
    n = len(preds)
    chain = dominator_chain(preds)
    pos = {d: k + 1 for k, d in enumerate(chain)}  # segment 0: before the first dominator
    # the segment of v is that of the latest chain dominator among v's dominators: with stages in
    # topological order, the latest chain member reachable backwards from v through every path
    seg = [0] * n
    for i in range(n):
        if i in pos:
            seg[i] = pos[i]
        elif preds[i]:
            # every path into i passes the dominators of i; the latest chain dominator of i dominates all its
            # predecessors too, and the chain is totally ordered, so the minimum over predecessors is it
            seg[i] = min(seg[p] for p in preds[i])
    out: dict[int, list[int]] = {}
    for i in range(n):
        out.setdefault(seg[i], []).append(i)
    return [tuple(out[k]) for k in sorted(out)]


def critical_path_ns(preds: list[tuple[int, ...]], stages: tuple[int, ...], time_ns: list[int]) -> int:
    """Longest path through `stages` (a subset closed under the order) with per-stage `time_ns`."""
    members = set(stages)
    fin: dict[int, int] = {}
    for i in stages:
        fin[i] = max((fin[p] for p in preds[i] if p in members), default=0) + time_ns[i]
    return max(fin.values(), default=0)


def split_budget(budget_ns: int, weights_ns: list[int]) -> list[int]:
    """Split `budget_ns` in proportion to `weights_ns` (integers that sum exactly to the budget; equal
    parts when every weight is 0)."""
    if not weights_ns:
        return []
    total = sum(weights_ns)
    if total <= 0:
        weights_ns = [1] * len(weights_ns)
        total = len(weights_ns)
    parts = [budget_ns * w // total for w in weights_ns]
    parts[-1] += budget_ns - sum(parts)
    return parts


def descendants_in(preds: list[tuple[int, ...]], root: int, members: tuple[int, ...]) -> tuple[int, ...]:
    """`root` and its descendants among `members`, in topological order."""
    inside = {root}
    for i in members:
        if i != root and any(p in inside for p in preds[i]):
            inside.add(i)
    return tuple(i for i in members if i in inside)


@dataclass(frozen=True)
class SloPlan:
    """A workflow's segments and nominal latencies: what `stage_budget_ns` needs per decision.

    `rest_ns[i]`: nominal critical path from stage i to the end of its segment (i included);
    `later_ns[k]`: nominal latency of all segments after segment k; `scope[i]`: stage i and its
    descendants in its segment, the stages one ESG_1Q search for stage i covers."""

    segments: tuple[tuple[int, ...], ...]
    segment_of: tuple[int, ...]
    weights_ns: tuple[int, ...]
    rest_ns: tuple[int, ...]
    later_ns: tuple[int, ...]
    scope: tuple[tuple[int, ...], ...]


def make_plan(preds: list[tuple[int, ...]], nominal_ns: list[int]) -> SloPlan:
    """Segments, weights and per-stage remaining nominal latency for a workflow."""
    segs = segments(preds)
    seg_of = [0] * len(preds)
    for k, s in enumerate(segs):
        for i in s:
            seg_of[i] = k
    weights = [critical_path_ns(preds, s, nominal_ns) for s in segs]
    later = [sum(weights[k + 1:]) for k in range(len(segs))]
    scope = [descendants_in(preds, i, segs[seg_of[i]]) for i in range(len(preds))]
    rest = [critical_path_ns(preds, scope[i], nominal_ns) for i in range(len(preds))]
    return SloPlan(tuple(segs), tuple(seg_of), tuple(weights), tuple(rest), tuple(later), tuple(scope))


def stage_budget_ns(plan: SloPlan, stage: int, time_left_ns: int) -> int:
    """The budget of `stage` and the rest of its segment, from the time actually left: the segment's
    remaining nominal latency over that of everything still ahead, times the time left."""
    if time_left_ns <= 0:
        return 0
    rest = plan.rest_ns[stage]
    later = plan.later_ns[plan.segment_of[stage]]
    if rest + later <= 0:
        return time_left_ns
    return time_left_ns * rest // (rest + later)
