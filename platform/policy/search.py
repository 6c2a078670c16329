"""The configuration search shared by `esg`, `oracle`, the scheduler benchmark and the property tests.

Pure functions over plain data. A *problem* is a list of `StageTable`s in topological order: stage 0
is the root (the stage whose queue is being scheduled), every other stage has at least one predecessor
among the earlier ones. A *path* picks one `Option` (a (batch, share) configuration with its time and
cost per request) per stage. Its latency is the critical path: a stage starts when all its predecessors
have finished and its inputs have been moved (`StageTable.transfer_ns`); its cost is the sum of the
options' costs per request. The goal: the cheapest path whose latency fits `budget_ns`.

- `astar()`: ESG_1Q's A*-search with the dual blades, the optimality-guided adaptive stop and the
  adaptive open-list window.
- `oracle()`: an exact exhaustive search (Pareto dynamic programming), no heuristic, no epsilon.
- `brute_force()`: literal enumeration of every path, for tiny problems (tests check `oracle` with it).

Both searches describe a partial path (stages 0..d-1 chosen) by what its future depends on, its
*frontier*: for each distinct set of chosen predecessors of the stages still to choose, the latest
finish among them (`_Dag`). Two partial paths with the same frontier, cost and root batch complete
alike; one no later on every frontier entry, no more expensive (and, while a later stage still waits
for the root's batch to fill, with a root batch no smaller) dominates the other.

Who calls it: `policy/esg.py`, `policy/oracle.py`, `policy/slo.py` (to find the cheapest feasible
workflow configuration), `gateway/cli/bench_scheduler.py`, tests. It changes nothing it is given.
"""

from __future__ import annotations

import heapq
import itertools
import math
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

INF = math.inf


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration of one stage. `time_ns` includes every delay the caller knows of for it (cold
    start, waiting for a busy instance, and for the root stage the batch-fill wait and its own input
    transfer); `cost` is the cost per request (GPU-share-time x price / batch). `tag` is the caller's,
    passed through untouched."""

    cost: float
    time_ns: int
    batch: int
    units: int
    tag: int = 0


@dataclass(frozen=True, slots=True)
class StageTable:
    """The options of one stage, its predecessors (indices of earlier stages), its batch-fill model and
    its input transfer. A non-root stage whose batch is larger than the root's waits `fill_ns_per_item`
    for each extra item (jobs reach it in batches of the root's size; larger batches need more
    arrivals). `transfer_ns` is added between its predecessors' finish and its start (moving their
    outputs to it; 0 where it is unknown or included in the options' times)."""

    options: tuple[Option, ...]
    preds: tuple[int, ...] = ()
    fill_ns_per_item: int = 0
    transfer_ns: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """What a search found: `choice[i]` indexes `problem[i].options` (None: no feasible path).
    `nodes_expanded` counts expanded partial paths, `generated` children considered (options dominated
    inside their stage count once each), `pruned` those cut by either blade, `capped` that the expansion
    limit stopped the search before its stop rule, `dives` how many expansions the A*'s adaptive window
    took out of strict lowest-f order (see `astar`)."""

    choice: tuple[int, ...] | None
    cost: float
    latency_ns: int
    nodes_expanded: int = 0
    generated: int = 0
    pruned: int = 0
    capped: bool = False
    dives: int = 0


def path_latency(problem: list[StageTable], choice: tuple[int, ...]) -> int:
    """Critical-path latency of a complete path, with the transfers and the downstream batch-fill waits."""
    fin: list[int] = []
    root_batch = problem[0].options[choice[0]].batch
    for st, k in zip(problem, choice):
        o = st.options[k]
        start = max((fin[p] for p in st.preds), default=0) + st.transfer_ns
        fin.append(start + o.time_ns + _fill(st, o.batch, root_batch, len(fin)))
    return max(fin)


def path_cost(problem: list[StageTable], choice: tuple[int, ...]) -> float:
    """Sum of the chosen options' costs per request."""
    return sum(st.options[k].cost for st, k in zip(problem, choice))


def _fill(st: StageTable, batch: int, root_batch: int, index: int) -> int:
    if index == 0 or batch <= root_batch:
        return 0
    return (batch - root_batch) * st.fill_ns_per_item


def _cost_of(st: StageTable) -> Callable[[int], float]:
    """Sort key: option index -> its cost (the no-blades search keeps every option, cheapest first)."""
    return lambda k: st.options[k].cost


def _validate(problem: list[StageTable]) -> None:
    if not problem:
        raise ValueError("search: empty problem")
    if problem[0].preds:
        raise ValueError("search: stage 0 must be the root (no predecessors)")
    for i, st in enumerate(problem[1:], 1):
        if not st.preds or any(not 0 <= p < i for p in st.preds):
            raise ValueError(f"search: stage {i} must have predecessors among stages 0..{i - 1}, got {st.preds}")


class _Dag:
    """What the searches need of a problem's DAG alone (`_dag` builds it).

    - `succs[i]`: stage i's successors.
    - `groups[c]`: with stages 0..c-1 chosen, the distinct non-empty sets of chosen predecessors of the
      stages c..n-1; a partial path's frontier is the latest finish in each (a tuple, same order).
    - `moves[c]`: how the frontier at c+1 follows from the one at c and stage c's finish `fin`: per
      group, (index at c, kind) with kind 0 = copy, 1 = max with `fin`, 2 = `fin` alone.
    - `start_at[c]`: index in `groups[c]` of stage c's predecessors (stage c starts at that entry).
    - `ahead[c]`: per stage j >= c, (j, index in `groups[c]` of its chosen predecessors or -1, its
      predecessors not yet chosen).
    """

    __slots__ = ("n", "preds", "succs", "groups", "moves", "start_at", "ahead")

    def __init__(self, preds: tuple[tuple[int, ...], ...]) -> None:
        n = self.n = len(preds)
        self.preds = preds
        self.succs = tuple(tuple(i for i in range(n) if p in preds[i]) for p in range(n))
        groups, group_of, ahead = [], [], []
        for c in range(n + 1):
            index: dict[tuple[int, ...], int] = {}
            of = [-1] * n
            for j in range(c, n):
                chosen = tuple(p for p in preds[j] if p < c)
                if chosen:
                    of[j] = index.setdefault(chosen, len(index))
            groups.append(tuple(index))
            group_of.append(of)
            ahead.append(tuple((j, of[j], tuple(p for p in preds[j] if p >= c)) for j in range(c, n)))
        self.groups = tuple(groups)
        self.ahead = tuple(ahead)
        moves = []
        for c in range(n):
            prev = {gr: k for k, gr in enumerate(groups[c])}
            moves.append(tuple((prev[tuple(p for p in gr if p != c)] if gr != (c,) else -1,
                                (1 if gr != (c,) else 2) if c in gr else 0) for gr in groups[c + 1]))
        self.moves = tuple(moves)
        self.start_at = tuple(group_of[c][c] for c in range(n))


@lru_cache(maxsize=256)
def _dag(preds: tuple[tuple[int, ...], ...]) -> _Dag:
    """The `_Dag` of a problem's predecessor lists.

    NOTE: memoized: it depends on the predecessor tuples alone, which are immutable and cheap to hash,
    and a workflow's segments (and the benchmark's chains) pose the same DAG decision after decision.
    Callers only read it."""
    return _Dag(preds)


class _Shape:
    """What both searches need of one problem, computed once per call: its `_Dag` (`dag`) and

    - `times[i]`: stage i's options' times; effective times add the stage's transfer (it only shifts the
      stage's finish, so adding it to every option is the same thing);
    - `min_t[i]`: stage i's fastest effective time; `tail[i]`: the fastest latency from stage i's start
      to a sink through i; `through[i]`: the fastest latency of the longest root-to-sink path through i,
      without i itself;
    - `rb_matters[c]`: some stage c..n-1 (not the root) has a batch-fill wait, so the root's batch
      still matters once it is chosen; `coupled`: some stage has one.
    """

    __slots__ = ("dag", "n", "times", "min_t", "tail", "through", "rb_matters", "coupled")

    def __init__(self, problem: list[StageTable]) -> None:
        dag = self.dag = _dag(tuple(tuple(st.preds) for st in problem))
        n = self.n = dag.n
        self.times = [[o.time_ns for o in st.options] for st in problem]
        self.min_t = min_t = [min(ts, default=0) + st.transfer_ns for ts, st in zip(self.times, problem)]
        self.tail = tail = [0] * n
        for i in range(n - 1, -1, -1):
            tail[i] = min_t[i] + max([tail[s] for s in dag.succs[i]], default=0)
        head = [0] * n  # fastest finish of a stage's predecessors
        for i in range(1, n):
            head[i] = max([head[p] + min_t[p] for p in dag.preds[i]])
        self.through = [head[i] + tail[i] - min_t[i] for i in range(n)]
        fills = [bool(st.fill_ns_per_item) for st in problem]
        fills[0] = False
        self.coupled = any(fills)
        self.rb_matters = [c > 0 and any(fills[c:]) for c in range(n + 1)]


def _advance(frontier: tuple, moves: tuple, fin: int) -> tuple:
    """The frontier after choosing a stage that finishes at `fin` (see `_Shape.moves`)."""
    return tuple([fin if kind == 2 else (frontier[s] if kind == 0 or frontier[s] >= fin else fin) for s, kind in moves])


def _stage_options(problem: list[StageTable], shape: _Shape, budget_ns: int) -> tuple[list[list[int]], int]:
    """Per stage, the indices of the options that can be in a feasible optimal path, cheapest first;
    and how many were cut.

    NOTE: the blades at the level of one stage, before the search. Blade 1: an option that overruns the
    budget even with every other stage at its fastest on the longest path through it is in no feasible
    path. Blade 2: option a dominates b when it is no more expensive, no slower and no worse for the
    batch-fill coupling: for the root a batch at least as large (the downstream waits shrink with the
    root's batch), for other stages a batch no larger (their own wait grows with it). Swapping b for a
    in any path changes neither feasibility nor cost for the worse, so at least one optimal path
    survives. Without coupling (no stage has a fill wait) the batch does not matter.
    """
    kept_all = []
    cut = 0
    for i, st in enumerate(problem):
        opts = st.options
        ts = shape.times[i]
        limit = budget_ns - shape.through[i] - st.transfer_ns
        cs = [o.cost for o in opts]
        order = sorted([k for k in range(len(opts)) if ts[k] <= limit], key=cs.__getitem__)
        kept = []
        if not shape.coupled:
            best_t = INF
            for k in order:
                if ts[k] < best_t:
                    kept.append(k)
                    best_t = ts[k]
        else:
            bs = [o.batch for o in opts]
            rank = {b: r for r, b in enumerate(sorted(set(bs), reverse=i == 0))}  # better batches first
            least = [INF] * len(rank)  # per batch rank: the least time kept with that rank or a better one
            for k in order:
                t = ts[k]
                r = rank[bs[k]]
                if least[r] <= t:
                    continue
                kept.append(k)
                while r < len(least) and least[r] > t:
                    least[r] = t
                    r += 1
        cut += len(opts) - len(kept)
        kept_all.append(kept)
    return kept_all, cut


def astar(problem: list[StageTable], budget_ns: int, epsilon: float = 0.0, *, blades: bool = True,
          max_expansions: int = 1_000_000, adaptive: bool = True) -> Result:
    """ESG_1Q: A*-search for the cheapest path within `budget_ns`; cost within (1 + epsilon) of optimal.

    g = cost per request of the stages chosen so far; h = per remaining stage, its cheapest option that
    fits, with its batch-fill wait at the chosen root batch, between the earliest it can start (its
    predecessors' finishes, or their fastest) and the fastest latency that must follow it (`_Lookahead`;
    admissible: no completion can cost less; none fits: the path is infeasible). Blade 1 (latency) cuts a partial path that has overrun the budget or whose h finds no
    fitting option for some remaining stage. Blade 2 (cost) cuts a path whose (g + h) x (1 + epsilon)
    cannot beat the best complete path, options dominated inside their stage (`_stage_options`), and a
    partial path dominated by an expanded one at the same depth (no more expensive and no later on its
    frontier, see the module docstring). Stop rule (optimality-guided adaptive stop): the best complete
    path's cost is within (1 + epsilon) of the lowest f not yet expanded, so it is within (1 + epsilon)
    of the optimum. `blades=False` turns all cuts off (complete paths are still checked against the
    budget) so benchmarks can show what pruning saves.

    Adaptive open list (DESIGN 4.2: widen or narrow it as the measured gap allows): the open list is
    kept per depth, and the search expands the deepest node whose f is inside a *window* above the
    lowest f (lowest f first within a depth), so it dives towards complete paths instead of raising the
    lower bound level by level. The window is [f_low, min((1 + epsilon) x f_low, best / (1 + epsilon))]:
    widened to (1 + epsilon) while the measured gap (best / f_low - 1, infinite before the first complete
    path) is large, since a path found inside it may already be within (1 + epsilon) of the bound and
    stop the search; narrowed as the gap closes, since a node above best / (1 + epsilon) can no longer
    improve the incumbent enough (blade 2) and only raising f_low still helps; epsilon = 0 keeps it shut
    (plain A*, deepest first among equal f). The order changes which nodes are expanded, never the stop
    rule, so the (1 + epsilon) guarantee holds for any window. `adaptive=False` shuts the window
    (plain A*); `Result.dives` counts expansions the window took out of strict lowest-f order.
    """
    _validate(problem)
    shape = _Shape(problem)
    n = shape.n
    if blades:
        kept, pruned = _stage_options(problem, shape, budget_ns)
    else:
        kept, pruned = [sorted(range(len(st.options)), key=_cost_of(st)) for st in problem], 0
    generated = pruned
    if any(not k for k in kept):
        return Result(None, INF, 0, 0, generated, pruned)
    costs = [[problem[i].options[k].cost for k in kept[i]] for i in range(n)]
    times = [[problem[i].options[k].time_ns + problem[i].transfer_ns for k in kept[i]] for i in range(n)]
    batches = [[problem[i].options[k].batch for k in kept[i]] for i in range(n)]
    h_static = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        h_static[i] = h_static[i + 1] + costs[i][0]
    look = _Lookahead(shape, (costs, times, batches), [0] + [st.fill_ns_per_item for st in problem[1:]], budget_ns)
    est = [0] * n  # scratch for the h of one child: each remaining stage's earliest finish
    scale = 1.0 + epsilon
    moves, start_at, rb_matters = shape.dag.moves, shape.dag.start_at, shape.rb_matters
    best_cost = INF
    best_choice: tuple[int, ...] | None = None
    best_lat = 0
    expanded = 0
    capped = False
    dives = 0
    seq = itertools.count()
    # per depth, a heap of open nodes: (f, g, seq, frontier, latency so far, choice, root batch)
    opens: list[list] = [[] for _ in range(n)]
    opens[0].append((h_static[0], 0.0, next(seq), (), 0, (), 0))
    closed: list[list] = [[] for _ in range(n)]  # per depth: (g, key) of the expanded nodes
    while True:
        f_low = INF
        for o in opens:
            if o and o[0][0] < f_low:
                f_low = o[0][0]
        if f_low == INF or best_cost <= scale * f_low:
            break  # adaptive stop: the incumbent is within (1 + epsilon) of every path not expanded
        top = max(f_low, min(f_low * scale, best_cost / scale)) if adaptive else f_low
        d = n - 1
        while not opens[d] or opens[d][0][0] > top:
            d -= 1  # ends at the latest at the depth of f_low
        f, g, _, front, lat, choice, rb = heapq.heappop(opens[d])
        dives += f > f_low
        if blades and d:
            # NOTE: dominance is checked when a node is expanded, against the nodes expanded before it at
            # its depth, not when it is pushed: a dominating node has a lower or equal f (h is monotone in
            # the frontier and the root batch) and a depth's heap pops in f order, so it comes first; and
            # the expanded nodes are few next to those pushed
            key = front + (-rb,) if rb_matters[d] else front
            if _dominated(closed[d], g, key):
                pruned += 1
                continue
            closed[d].append((g, key))
        if expanded >= max_expansions:
            capped = True
            break
        expanded += 1
        start = front[start_at[d]] if d else 0
        cs, ts, bs, ks = costs[d], times[d], batches[d], kept[d]
        fill = problem[d].fill_ns_per_item
        mv = moves[d]
        last = d + 1 == n
        h_next = h_static[d + 1]
        plan = look.plan(d + 1, rb) if blades and d else None
        for x in range(len(cs)):
            g2 = g + cs[x]
            generated += 1
            if blades and (g2 + h_next) * scale >= best_cost:
                # options are in cost order: every later one is at least as expensive
                rest = len(cs) - x
                pruned += rest
                generated += rest - 1
                break
            b = bs[x]
            if d:
                rb2 = rb
                fin = start + ts[x] + ((b - rb) * fill if b > rb else 0)
            else:
                rb2 = b
                fin = ts[x]
                if blades:
                    plan = look.plan(1, b)
            lat2 = lat if lat > fin else fin
            if last:
                if lat2 <= budget_ns and g2 < best_cost:
                    best_cost, best_choice, best_lat = g2, choice + (ks[x],), lat2
                continue
            front2 = _advance(front, mv, fin)
            if blades:
                if lat2 > budget_ns:
                    pruned += 1
                    continue
                h2 = 0.0
                for j, gj, ups, room0, negt, cst, mt in plan:  # type: ignore[union-attr]  # set whenever blades
                    sj = front2[gj] if gj >= 0 else 0
                    for p in ups:
                        if est[p] > sj:
                            sj = est[p]
                    est[j] = sj + mt
                    q = bisect_left(negt, sj - room0)
                    if q == len(negt):
                        h2 = INF
                        break
                    h2 += cst[q]
                if h2 == INF or (g2 + h2) * scale >= best_cost:
                    pruned += 1  # blade 1 (no remaining option fits) or blade 2
                    continue
            else:
                h2 = h_next
            heapq.heappush(opens[d + 1], (g2 + h2, g2, next(seq), front2, lat2, choice + (ks[x],), rb2))
    return Result(best_choice, best_cost, best_lat, expanded, generated, pruned, capped, dives)


class _Lookahead:
    """The tables of the time-aware h, built on demand and kept for one search.

    NOTE: memoized per (depth, root batch) and per (stage, root batch), within one search only: they
    depend on the budget and the kept options, which change from call to call.

    `plan(c, rb)`: at depth c with root batch rb, per remaining stage j in order: (j, its group in the
    frontier or -1, its predecessors not yet chosen, budget - the fastest latency after it, and its
    cost/time staircase at that root batch: the options no other is both cheaper and faster than, their
    times with the batch-fill wait, as negated times ascending and costs ascending, so the cheapest
    option within a time is one bisection; last its least time).
    """

    __slots__ = ("shape", "cols", "fills", "budget_ns", "stairs", "plans")

    def __init__(self, shape: _Shape, cols: tuple, fills: list[int], budget_ns: int) -> None:
        self.shape = shape
        self.cols = cols  # per stage: kept options' costs, effective times, batches (cost order)
        self.fills = fills
        self.budget_ns = budget_ns
        self.stairs: dict = {}
        self.plans: dict = {}

    def plan(self, c: int, rb: int) -> tuple:
        """See the class docstring."""
        key = (c, rb if self.shape.rb_matters[c] else 0)
        p = self.plans.get(key)
        if p is None:
            sh = self.shape
            p = self.plans[key] = tuple((j, gj, ups, self.budget_ns - (sh.tail[j] - sh.min_t[j])) + self._stair(j, key[1])
                                        for j, gj, ups in sh.dag.ahead[c])
        return p

    def _stair(self, j: int, rb: int) -> tuple:
        fill = self.fills[j]
        key = (j, rb if fill else 0)
        st = self.stairs.get(key)
        if st is None:
            negt: list[int] = []
            cst: list[float] = []
            costs, times, batches = self.cols[0][j], self.cols[1][j], self.cols[2][j]
            for c, t, b in zip(costs, times, batches):  # cost order
                if fill and b > rb:
                    t += (b - rb) * fill
                if not negt or t < -negt[-1]:
                    negt.append(-t)
                    cst.append(c)
            st = self.stairs[key] = (negt, cst, -negt[-1])
        return st


def _dominated(closed: list, g: float, key: tuple) -> bool:
    """True when an entry of `closed` is no more expensive and no later on every key entry."""
    for g0, k0 in closed:
        if g0 <= g:
            for a, b in zip(k0, key):
                if a > b:
                    break
            else:
                return True
    return False


def oracle(problem: list[StageTable], budget_ns: int) -> Result:
    """The exact optimum by exhaustive dynamic programming over all paths.

    NOTE: literal enumeration is (options per stage)^(stages), 80^8 for the benchmark's largest cases, so
    the oracle enumerates stage by stage and merges partial paths that are exactly interchangeable or
    worse: one no cheaper and no later on every frontier entry (and, with fill coupling, no smaller root
    batch) than another can never complete to a strictly better path (module docstring). It also drops
    partial paths whose elapsed latency already exceeds the budget. No heuristic, no epsilon, no
    lookahead bound: tests check it against `brute_force` on small problems.
    """
    _validate(problem)
    shape = _Shape(problem)
    # state: (g, latency so far, frontier, choice, root batch)
    states: list[tuple] = [(0.0, 0, (), (), 0)]
    generated = 0
    for d, st in enumerate(problem):
        new = []
        mv = shape.dag.moves[d]
        for g, lat, front, choice, rb in states:
            start = (front[shape.dag.start_at[d]] if d else 0) + st.transfer_ns
            for k, o in enumerate(st.options):
                generated += 1
                rb2 = o.batch if d == 0 else rb
                fin = start + o.time_ns + _fill(st, o.batch, rb2, d)
                if fin > budget_ns:
                    continue
                new.append((g + o.cost, max(lat, fin), _advance(front, mv, fin), choice + (k,), rb2))
        if not new:
            return Result(None, INF, 0, 0, generated, 0)
        states = _pareto_states(new, shape.rb_matters[d + 1])
    g, lat, _, choice, _ = states[0]
    return Result(choice, g, lat, 0, generated, 0)


def _pareto_states(states: list[tuple], rb_matters: bool) -> list[tuple]:
    """The states not dominated by another (see `oracle`), cheapest first; ties keep the quickest."""
    # NOTE: the latency already done is within the budget and the budget is a constraint, not an
    # objective, so only the frontier (and the root batch while some stage still waits on it) can make a
    # state's future better or worse
    keys = [s[2] + (-s[4],) if rb_matters else s[2] for s in states]
    order = sorted(range(len(states)), key=lambda i: (states[i][0], keys[i], states[i][1]))
    width = len(keys[0])
    if width == 0:
        return [states[order[0]]]
    if width == 1:
        out, best = [], INF  # 1-D keys: a sweep in cost order keeps the strictly faster ones
        for i in order:
            if keys[i][0] < best:
                best = keys[i][0]
                out.append(states[i])
        return out
    if width == 2:
        return _pareto_2d(states, keys, order)
    kept: list[tuple] = []
    kept_keys: list[tuple] = []
    for i in order:
        k = keys[i]
        if not any(all(a <= b for a, b in zip(kk, k)) for kk in kept_keys):
            kept.append(states[i])
            kept_keys.append(k)
    return kept


def _pareto_2d(states: list[tuple], keys: list[tuple], order: list[int]) -> list[tuple]:
    """`_pareto_states` for 2-D keys: the kept keys form a staircase (first entry ascending, second
    descending), so whether a key is dominated is one bisection."""
    xs: list = []
    ys: list = []
    out = []
    for i in order:
        a, b = keys[i]
        at = bisect_right(xs, a)
        if at and ys[at - 1] <= b:
            continue  # the least second entry among those with a first entry <= a
        end = at
        while end < len(xs) and ys[end] >= b:
            end += 1
        xs[at:end] = [a]
        ys[at:end] = [b]
        out.append(states[i])
    return out


def brute_force(problem: list[StageTable], budget_ns: int) -> Result:
    """Every path, literally (tiny problems only): the reference the oracle is tested against."""
    _validate(problem)
    best: tuple[int, ...] | None = None
    best_cost = INF
    best_lat = 0
    for choice in itertools.product(*(range(len(st.options)) for st in problem)):
        c = path_cost(problem, choice)
        if c < best_cost:
            lat = path_latency(problem, choice)
            if lat <= budget_ns:
                best, best_cost, best_lat = choice, c, lat
    return Result(best, best_cost, best_lat)
