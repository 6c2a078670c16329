"""`infless`: our reading of INFless (Yang et al., "INFless: A Native Serverless System for Low-Latency,
High-Throughput Inference", ASPLOS 2022).

What INFless decides, and what this module keeps:
- Per function, a *resource configuration* (batch size, GPU share) chosen against that function's own
  latency SLO: the batch must fill and run in time, `(b - 1) / r + t_exec(b, share) <= SLO`, where `r`
  is the request rate the instance is given (INFless's lower rate bound of a batch configuration),
  and among feasible configurations the one with the best throughput per unit of resource wins.
- *Non-uniform scaling*: when the measured rate exceeds the capacity of the running instances, the
  residual rate gets new instances whose configuration is chosen for that residual, so a function ends
  up with instances of different batch sizes and shares; surplus capacity is removed least efficient
  instance first.
- *Built-in batching*: an instance runs a full batch at once and a partial one when the oldest request
  has waited the configuration's batch timeout (its budget minus its execution time).

What this project simplified or chose (not in the paper, or not applicable here):
- INFless serves single functions. For a workflow, the end-to-end SLO is split per stage by latency
  weight (batch-1 whole-GPU latency along the heaviest path through the stage), or evenly with
  `split=even`; a function shared by several stages takes its tightest budget. No pipeline awareness:
  the budget is counted from when the job entered the stage's queue, whatever happened upstream.
- The COP latency predictor is replaced by the shipped profile tables (exact in simulation), and the
  LSTH keep-alive / pre-warming policy by the platform keep-alive plus a scale-down delay.
- Requests wait in one queue per function shared by all its instances (largest batch first), not in
  per-instance queues fed by a weighted router.
- CPU resources of a configuration are not modelled (GPU share only).

Tuned: defaults `slack` 0.8 (budget fraction for fill + execution), `target_utilisation` 0.8, latency-
weighted split, 15 s scale-down delay. On the shipped scenarios at load 1, `target_utilisation=0.6` and
`split=even` each stayed within 0.01 of the defaults' SLO hit rate at up to 1.5x the allocated cost, so
the defaults stay (a small check, not an exhaustive sweep; any of them can be set per scenario under
`params: {infless: {...}}`, `--set infless.KEY=VALUE`). Also ours, for all pool baselines: on a workflow's first invocation
every function of it is pre-warmed, and queued jobs already past their deadline are rejected.
"""

from __future__ import annotations

from gpufaas.platform.policy.baselines import Config, PoolPolicy, PoolState, fills_in_time
from gpufaas.platform.runtime import Instance
from gpufaas.platform.views import ClusterView

# NOTE: never plan more than this many new instances of one function in one tick (a runaway guard for
# a rate spike; the next tick adds more if the measured rate stays high).
MAX_STARTS_PER_TICK = 32
# consolidate when the live pool holds more than this many times the share a fresh plan would
CONSOLIDATE_RATIO = 1.3


class InflessPolicy(PoolPolicy):
    """Per-function (batch, share) against a per-stage SLO, non-uniform scaling, batch timeouts.

    Who calls it: the controller (`schedule`), through the registry name `infless`. State: `PoolState`.
    """

    name = "infless"

    def _cap(self, c: Config) -> float:
        return c.capacity_rps(self.target_utilisation)

    def _live_config(self, st: PoolState, inst: Instance) -> Config:
        fn = inst.function
        lat = fn.latency_ns(inst.gpu.type_name, inst.max_batch, inst.share_units, inst.gpu.share_units)
        return Config(inst.max_batch, inst.share_units, lat, inst.memory_mb)

    def choose(self, cfgs: list[Config], rate_rps: float, limit_ns: int) -> Config | None:
        """INFless's choice for an instance given `rate_rps`: among configs whose batch fills in time at
        that rate, the lowest share per request actually served (share / min(capacity, rate))."""
        best = None
        best_key = None
        for c in cfgs:
            if not fills_in_time(c, rate_rps, limit_ns):
                continue
            key = (c.share_units / min(self._cap(c), rate_rps), c.latency_ns)
            if best_key is None or key < best_key:
                best, best_key = c, key
        return best

    def greedy(self, cfgs: list[Config], rate_rps: float, limit_ns: int) -> list[Config]:
        """Non-uniform plan for `rate_rps` on top of nothing: repeatedly give the residual rate the
        instance `choose()` picks, until the residual is covered (at most MAX_STARTS_PER_TICK)."""
        out: list[Config] = []
        residual = rate_rps
        while residual > 1e-9 and len(out) < MAX_STARTS_PER_TICK:
            c = self.choose(cfgs, residual, limit_ns) or min(cfgs, key=lambda x: x.latency_ns)
            out.append(c)
            residual -= self._cap(c)
        return out

    def _scale_for_rate(self, view: ClusterView, st: PoolState, fname: str, rate_rps: float,
                        live: list[Instance]) -> tuple[list[Config], list[Instance]]:
        limit = self.limit_ns(st, fname)
        cfgs = self.offered_configs(view, st, fname)
        caps = [(self._cap(self._live_config(st, i)), i) for i in live]
        total = sum(c for c, _ in caps)
        if rate_rps > total:
            # scale out: the residual rate gets instances configured for it (non-uniform scaling)
            return self.greedy(cfgs, rate_rps - total, limit), []
        ideal = self.greedy(cfgs, rate_rps, limit)
        live_units = sum(i.share_units for i in live)
        if live_units > CONSOLIDATE_RATIO * sum(c.share_units for c in ideal) + 1:
            # NOTE: instances added one residual at a time can end up far costlier than a plan made for
            # the whole rate (e.g. batch-1 instances started while the rate was still unknown). Then
            # start the plan for the whole rate and let the old ones go: ours, so that the baseline is
            # not penalised for its cold-start history.
            want = list(ideal)
            keep: list[Instance] = []
            for inst in live:
                c = next((c for c in want if c.batch == inst.max_batch and c.share_units == inst.share_units), None)
                if c is not None:
                    want.remove(c)
                    keep.append(inst)
            return want, [i for i in live if i not in keep]
        surplus: list[Instance] = []
        # least efficient first (most share per unit of capacity), while the rest still covers the rate
        for cap, inst in sorted(caps, key=lambda x: (-x[1].share_units / x[0], -x[1].id)):
            if total - cap >= rate_rps:
                surplus.append(inst)
                total -= cap
        return [], surplus
