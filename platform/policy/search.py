"""The configuration search shared by `esg`, `oracle`, the scheduler benchmark and the property tests.

Pure functions over plain data. A *problem* is a list of `StageTable`s in topological order: stage 0
is the root (the stage whose queue is being scheduled), every other stage has at least one predecessor
among the earlier ones. A *path* picks one `Option` (a (batch, share) configuration with its time and
cost per request) per stage. Its latency is the critical path: a stage starts when all its predecessors
have finished; its cost is the sum of the options' costs per request. The goal: the cheapest path whose
latency fits `budget_ns`.

- `astar()`: ESG_1Q's A*-search with the dual blades and the optimality-guided adaptive stop.
- `oracle()`: an exact exhaustive search (Pareto dynamic programming), no heuristic, no epsilon.
- `brute_force()`: literal enumeration of every path, for tiny problems (tests check `oracle` with it).

Who calls it: `policy/esg.py`, `policy/oracle.py`, `policy/slo.py` (to find the cheapest feasible
workflow configuration), `gateway/cli/bench_scheduler.py`, tests. It changes nothing it is given.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
from dataclasses import dataclass

INF = math.inf


@dataclass(frozen=True, slots=True)
class Option:
    """One configuration of one stage. `time_ns` includes every delay the caller knows of for it (cold
    start, waiting for a busy instance, and for the root stage the batch-fill wait); `cost` is the cost
    per request (GPU-share-time x price / batch). `tag` is the caller's, passed through untouched."""

    cost: float
    time_ns: int
    batch: int
    units: int
    tag: int = 0


@dataclass(frozen=True, slots=True)
class StageTable:
    """The options of one stage, its predecessors (indices of earlier stages), and its batch-fill
    model: a non-root stage whose batch is larger than the root's waits `fill_ns_per_item` for each
    extra item (jobs reach it in batches of the root's size; larger batches need more arrivals)."""

    options: tuple[Option, ...]
    preds: tuple[int, ...] = ()
    fill_ns_per_item: int = 0


@dataclass(frozen=True, slots=True)
class Result:
    """What a search found: `choice[i]` indexes `problem[i].options` (None: no feasible path).
    `nodes_expanded` counts popped partial paths, `generated` children considered (options dominated
    inside their stage count once each), `pruned` those cut by either blade, `capped` that the expansion
    limit stopped the search before its stop rule."""

    choice: tuple[int, ...] | None
    cost: float
    latency_ns: int
    nodes_expanded: int = 0
    generated: int = 0
    pruned: int = 0
    capped: bool = False


def path_latency(problem: list[StageTable], choice: tuple[int, ...]) -> int:
    """Critical-path latency of a complete path, with the downstream batch-fill waits."""
    fin: list[int] = []
    root_batch = problem[0].options[choice[0]].batch
    for st, k in zip(problem, choice):
        o = st.options[k]
        start = max((fin[p] for p in st.preds), default=0)
        fin.append(start + o.time_ns + _fill(st, o.batch, root_batch, len(fin)))
    return max(fin)


def path_cost(problem: list[StageTable], choice: tuple[int, ...]) -> float:
    """Sum of the chosen options' costs per request."""
    return sum(st.options[k].cost for st, k in zip(problem, choice))


def _fill(st: StageTable, batch: int, root_batch: int, index: int) -> int:
    if index == 0 or batch <= root_batch:
        return 0
    return (batch - root_batch) * st.fill_ns_per_item


def _validate(problem: list[StageTable]) -> None:
    if not problem:
        raise ValueError("search: empty problem")
    if problem[0].preds:
        raise ValueError("search: stage 0 must be the root (no predecessors)")
    for i, st in enumerate(problem[1:], 1):
        if not st.preds or any(not 0 <= p < i for p in st.preds):
            raise ValueError(f"search: stage {i} must have predecessors among stages 0..{i - 1}, got {st.preds}")


def _structure(problem: list[StageTable]):
    """Successors, the fastest remaining latency from each stage to a sink (`tail`), and for each
    depth d which assigned stages still have an unassigned successor (the 'open' ones)."""
    n = len(problem)
    succs: list[list[int]] = [[] for _ in range(n)]
    for i, st in enumerate(problem):
        for p in st.preds:
            succs[p].append(i)
    min_t = [min(o.time_ns for o in st.options) if st.options else INF for st in problem]
    tail = [0] * n
    for i in range(n - 1, -1, -1):
        tail[i] = min_t[i] + max((tail[s] for s in succs[i]), default=0)
    # open_at[d]: stages < d with a successor >= d; their finish times are all the future depends on
    open_at = [tuple(i for i in range(d) if any(s >= d for s in succs[i])) for d in range(n + 1)]
    # for the latency bound at depth d: per open stage, the longest fastest tail through its unassigned successors
    tail_after = [tuple(max(tail[s] for s in succs[i] if s >= d) for i in open_at[d]) for d in range(n + 1)]
    return succs, tail, open_at, tail_after


def _through(problem: list[StageTable]) -> list[int]:
    """Per stage: the fastest latency of the longest root-to-sink path through it, without the stage itself."""
    n = len(problem)
    min_t = [min((o.time_ns for o in st.options), default=0) for st in problem]
    head = [0] * n  # fastest finish of the stage's predecessors (longest path to it)
    fin = [0] * n
    for i, st in enumerate(problem):
        head[i] = max((fin[p] for p in st.preds), default=0)
        fin[i] = head[i] + min_t[i]
    _, tail, _, _ = _structure(problem)
    return [head[i] + tail[i] - min_t[i] for i in range(n)]


def _pareto_options(st: StageTable, is_root: bool, coupled: bool) -> list[int]:
    """Indices of the options not dominated inside their own stage, cheapest first.

    NOTE: blade 2 at the level of one stage. Option a dominates b when it is no more expensive and no
    slower and no worse for the batch-fill coupling: for the root a batch at least as large (the
    downstream waits shrink with the root's batch), for other stages a batch no larger (their own wait
    grows with it). Swapping b for a in any path then changes neither feasibility nor cost for the
    worse, so at least one optimal path survives. Without coupling (no stage has a fill wait) the
    batch does not matter.
    """
    opts = st.options
    order = sorted(range(len(opts)), key=lambda k: (opts[k].cost, opts[k].time_ns, -opts[k].batch if is_root else opts[k].batch))
    kept: list[int] = []
    if not coupled:
        best_t = INF
        for k in order:
            if opts[k].time_ns < best_t:
                kept.append(k)
                best_t = opts[k].time_ns
        return kept
    best_by_batch: dict[int, float] = {}
    for k in order:
        o = opts[k]
        if is_root:
            dom = any(t <= o.time_ns for b, t in best_by_batch.items() if b >= o.batch)
        else:
            dom = any(t <= o.time_ns for b, t in best_by_batch.items() if b <= o.batch)
        if not dom:
            kept.append(k)
            if o.time_ns < best_by_batch.get(o.batch, INF):
                best_by_batch[o.batch] = o.time_ns
    return kept


def astar(problem: list[StageTable], budget_ns: int, epsilon: float = 0.0, *, blades: bool = True,
          max_expansions: int = 1_000_000) -> Result:
    """ESG_1Q: A*-search for the cheapest path within `budget_ns`; cost within (1 + epsilon) of optimal.

    g = cost per request of the stages chosen so far; h = the sum of each remaining stage's cheapest
    option (admissible: no completion can cost less). Blade 1 (latency) cuts a partial path whose
    finish times plus the fastest possible remaining latency overrun the budget. Blade 2 (cost) cuts a
    path whose (g + h) x (1 + epsilon) cannot beat the best complete path, options dominated inside
    their stage, and a partial path dominated at the same depth by another one (no more expensive, and
    no later on every finish time the rest of the search depends on). Stop rule (optimality-guided
    adaptive stop): the best complete path's cost is within (1 + epsilon) of the lowest f on the open
    list, so it is within (1 + epsilon) of the optimum. `blades=False` turns all cuts off (complete paths
    are still checked against the budget) so benchmarks can show what pruning saves.
    """
    _validate(problem)
    n = len(problem)
    coupled = any(st.fill_ns_per_item for st in problem[1:])
    _, tail, open_at, tail_after = _structure(problem)
    pruned = 0
    generated = 0
    if blades:
        order = []
        through = _through(problem) if n > 1 else [0]
        for i, st in enumerate(problem):
            # blade 1 on single options: one that overruns the budget even with every other stage at its
            # fastest on the longest path through it can be in no feasible path
            limit = budget_ns - through[i]
            ids = [k for k, o in enumerate(st.options) if o.time_ns <= limit]
            fit = StageTable(tuple(st.options[k] for k in ids), st.preds, st.fill_ns_per_item)
            kept = [ids[k] for k in _pareto_options(fit, i == 0, coupled)]
            pruned += len(st.options) - len(kept)
            generated += len(st.options) - len(kept)
            order.append(kept)
    else:
        order = [sorted(range(len(st.options)), key=lambda k, st=st: st.options[k].cost) for st in problem]
    if any(not o for o in order):
        return Result(None, INF, 0, 0, generated, pruned)
    min_cost = [min(problem[i].options[k].cost for k in order[i]) for i in range(n)]
    h = [0.0] * (n + 1)
    for i in range(n - 1, -1, -1):
        h[i] = h[i + 1] + min_cost[i]
    # for the time-aware h: per stage, its kept options' times and costs (cost order), the fastest
    # latency that must follow it, and its predecessors
    otimes = [[problem[j].options[k].time_ns for k in order[j]] for j in range(n)]
    ocosts = [[problem[j].options[k].cost for k in order[j]] for j in range(n)]
    min_t = [min(t) for t in otimes]
    tail_excl = [tail[j] - min(o.time_ns for o in problem[j].options) for j in range(n)]
    preds_of = [st.preds for st in problem]
    est_fin = [0] * n
    scale = 1.0 + epsilon
    best_cost = INF
    best_choice: tuple[int, ...] | None = None
    best_lat = 0
    expanded = 0
    capped = False
    # open list entries: (f, g, seq, depth, finishes, choice, root_batch, alive)
    seq = itertools.count()
    heap: list = [(h[0], 0.0, next(seq), 0, (), (), 0, [True])]
    # per depth: non-dominated (g, key, alive) of the partial paths pushed so far
    frontier: list[tuple[list, list]] = [([], []) for _ in range(n + 1)]
    while heap:
        f, g, _, d, fins, choice, rb, alive = heap[0]
        if best_choice is not None and best_cost <= scale * f:
            break  # adaptive stop: the incumbent is within (1 + epsilon) of every open path
        heapq.heappop(heap)
        if not alive[0]:
            continue  # dominated after it was pushed
        if expanded >= max_expansions:
            capped = True
            break
        expanded += 1
        st = problem[d]
        opts = st.options
        preds = st.preds
        start = max(fins[p] for p in preds) if preds else 0
        done_lat = max(fins) if fins else 0
        h_next = h[d + 1]
        last = d + 1 == n
        open_next = open_at[d + 1]
        tails_next = tail_after[d + 1]
        for k in order[d]:
            o = opts[k]
            g2 = g + o.cost
            generated += 1
            if blades and (g2 + h_next) * scale >= best_cost:
                # options are in cost order: every later one is at least as expensive
                rest = len(order[d]) - order[d].index(k)
                pruned += rest
                generated += rest - 1
                break
            rb2 = o.batch if d == 0 else rb
            fin = start + o.time_ns + (0 if d == 0 or o.batch <= rb2 else (o.batch - rb2) * st.fill_ns_per_item)
            fins2 = fins + (fin,)
            if last:
                lat = max(done_lat, fin)
                if lat <= budget_ns and g2 < best_cost:
                    best_cost, best_choice, best_lat = g2, choice + (k,), lat
                continue
            if blades:
                # blade 1: the fastest completion of this partial path
                lb = max(done_lat, fin)
                for i, t in zip(open_next, tails_next):
                    v = fins2[i] + t
                    if v > lb:
                        lb = v
                if lb > budget_ns:
                    pruned += 1
                    continue
                # NOTE: h, sharpened and still admissible: each remaining stage's cheapest option that fits
                # between the earliest it can start (its predecessors' finishes, or their fastest) and the
                # fastest latency that must follow it; none fits: the path is infeasible (blade 1)
                h2 = 0.0
                for j in range(d + 1, n):
                    sj = 0
                    for p in preds_of[j]:
                        v = fins2[p] if p <= d else est_fin[p]
                        if v > sj:
                            sj = v
                    est_fin[j] = sj + min_t[j]
                    room = budget_ns - sj - tail_excl[j]
                    ts = otimes[j]
                    for kk in range(len(ts)):
                        if ts[kk] <= room:
                            h2 += ocosts[j][kk]
                            break
                    else:
                        h2 = INF
                        break
                if (g2 + h2) * scale >= best_cost or h2 == INF:
                    pruned += 1
                    continue
                key = tuple(fins2[i] for i in open_next) + ((-rb2,) if coupled else ())  # see _pareto_states
                if _dominated(frontier[d + 1], g2, key):
                    pruned += 1
                    continue
                flag = [True]
                _insert(frontier[d + 1], g2, key, flag)
            else:
                flag = [True]
                h2 = h_next
            heapq.heappush(heap, (g2 + h2, g2, next(seq), d + 1, fins2, choice + (k,), rb2, flag))
    return Result(best_choice, best_cost, best_lat, expanded, generated, pruned, capped)


def _dominated(front: list, g: float, key: tuple) -> bool:
    """True when an entry of `front` (kept sorted by g) is no more expensive and no later on every key."""
    gs, entries = front
    hi = bisect.bisect_right(gs, g)
    if len(key) == 1:
        k = key[0]
        for i in range(hi):
            if entries[i][0][0] <= k:
                return True
        return False
    if len(key) == 2:
        a, b = key
        for i in range(hi):
            k0 = entries[i][0]
            if k0[0] <= a and k0[1] <= b:
                return True
        return False
    for i in range(hi):
        k0 = entries[i][0]
        for x, y in zip(k0, key):
            if x > y:
                break
        else:
            return True
    return False


def _insert(front: list, g: float, key: tuple, flag: list) -> None:
    """Add a non-dominated entry; entries it dominates leave the frontier and their open-list nodes die."""
    gs, entries = front
    lo = bisect.bisect_left(gs, g)
    i = lo
    while i < len(gs):
        k0 = entries[i][0]
        for x, y in zip(key, k0):
            if x > y:
                i += 1
                break
        else:
            entries[i][1][0] = False
            del gs[i]
            del entries[i]
    gs.insert(lo, g)
    entries.insert(lo, (key, flag))


def oracle(problem: list[StageTable], budget_ns: int) -> Result:
    """The exact optimum by exhaustive dynamic programming over all paths.

    NOTE: literal enumeration is (options per stage)^(stages), 80^8 for the benchmark's largest cases, so
    the oracle enumerates stage by stage and merges partial paths that are exactly interchangeable or
    worse: one no cheaper and no earlier on every finish time the rest depends on (and, with fill
    coupling, no smaller root batch) than another can never complete to a strictly better path. It also
    drops partial paths whose elapsed latency already exceeds the budget. No heuristic, no epsilon, no
    lookahead bound: tests check it against `brute_force` on small problems.
    """
    _validate(problem)
    n = len(problem)
    coupled = any(st.fill_ns_per_item for st in problem[1:])
    _, _, open_at, _ = _structure(problem)
    # state: (g, fins, choice, root_batch)
    states: list[tuple] = [(0.0, (), (), 0)]
    generated = 0
    for d in range(n):
        st = problem[d]
        new = []
        for g, fins, choice, rb in states:
            start = max(fins[p] for p in st.preds) if st.preds else 0
            done = max(fins) if fins else 0
            for k, o in enumerate(st.options):
                generated += 1
                rb2 = o.batch if d == 0 else rb
                fin = start + o.time_ns + _fill(st, o.batch, rb2, d)
                if max(fin, done) > budget_ns:
                    continue
                new.append((g + o.cost, fins + (fin,), choice + (k,), rb2))
        if not new:
            return Result(None, INF, 0, 0, generated, 0)
        nxt = open_at[d + 1]
        states = _pareto_states(new, nxt, coupled)
    g, fins, choice, _ = min(states, key=lambda s: (s[0], max(s[1])))
    return Result(choice, g, max(fins), 0, generated, 0)


def _pareto_states(states: list[tuple], open_idx: tuple[int, ...], coupled: bool) -> list[tuple]:
    """The states not dominated by another (see `oracle`); ties keep the first in cost order."""
    # NOTE: the latency already done (finishes of stages with no successor left) is within the budget and
    # the budget is a constraint, not an objective, so only the open finishes (and the root batch while
    # some stage still waits on it) can make a state's future better or worse.
    if not open_idx:
        return [min(states, key=lambda s: s[0])]
    keys = [tuple(s[1][i] for i in open_idx) + ((-s[3],) if coupled else ()) for s in states]
    order = sorted(range(len(states)), key=lambda i: (states[i][0], keys[i]))
    width = len(keys[0])
    if width == 1:
        out, best = [], INF  # 1-D keys: a sweep in cost order keeps the strictly faster ones
        for i in order:
            if keys[i][0] < best:
                best = keys[i][0]
                out.append(states[i])
        return out
    if width == 2 and len({k[1] for k in keys}) <= 16:
        # 2-D keys whose second dimension takes few values (the root batch): per value, the least first
        # dimension kept so far; a state is dominated when some value <= its own has a first dim <= its own
        best2: dict = {}
        out = []
        for i in order:
            a, b = keys[i]
            if any(a0 <= a for b0, a0 in best2.items() if b0 <= b):
                continue
            best2[b] = a
            out.append(states[i])
        return out
    return _filter_general([(states[i], keys[i]) for i in order])


def _filter_general(items: list[tuple]) -> list[tuple]:
    """Keep items (already in cost order) whose key no earlier kept item dominates componentwise."""
    kept: list[tuple] = []
    keys: list[tuple] = []
    for s, k in items:
        if not any(all(a <= b for a, b in zip(kk, k)) for kk in keys):
            kept.append(s)
            keys.append(k)
    return kept


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
