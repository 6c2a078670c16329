"""`static`: the best single (batch, share) and instance count per function, found once offline for
the scenario's mean load, then never changed (a provisioned, non-elastic deployment).

What it decides: `tune()` receives the mean offered rate per workflow (at the run's load); on the
first call the policy computes, per function, the (batch, share, n) that serves the function's rate
with the fewest share units in total, n x share, under the same per-stage budget `infless` uses
(latency-weighted split of the SLO; the batch must fill and run within the budget at the mean rate),
sizing n at `target_utilisation` of full-batch throughput. It starts those instances and keeps exactly
them for the whole run (an instance lost to keep-alive expiry is started again). Dispatch: full batches
at once, partial ones at the batch-fill timeout.

No paper: this is the "tuned offline, provisioned for the average" baseline every autoscaler is
measured against. It knows the mean load in advance, which the online policies do not; it cannot
follow bursts or on-off phases.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field, PositiveFloat

from gpufaas.platform.errors import UserError
from gpufaas.platform.policy.baselines import (Config, PoolPolicy, PoolState, fills_in_time, fixed_pool,
                                               function_rates_rps)
from gpufaas.platform.runtime import Instance
from gpufaas.platform.views import ClusterView


class StaticPolicy(PoolPolicy):
    """Fixed per-function pools planned offline for the mean load.

    Who calls it: `loadgen.simdriver.build_policy` calls `tune()` once before the run; the controller
    calls `schedule`. `tune` sets configuration (the offered rates), not run-time state.
    """

    name = "static"

    class Params(PoolPolicy.Params):
        """The pool parameters, and the offered mean rate per workflow the plan is made for (set by
        `tune` when run through `gpufaas sim`)."""

        rates_rps: dict[str, PositiveFloat] | None = Field(None, description="mean rate per workflow, rps")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        assert isinstance(self.params, StaticPolicy.Params)  # PoolPolicy validated against type(self).Params
        rates = self.params.rates_rps
        self.rates_rps = dict(rates) if rates else None

    def tune(self, *, scenario: Any = None, rates_rps: dict[str, float]) -> None:
        """Record the mean offered rate per workflow the plan is made for (called once, before the run)."""
        self.rates_rps = dict(rates_rps)

    def plan_for(self, cfgs: list[Config], rate_rps: float, limit_ns: int) -> tuple[Config, int] | None:
        """The (config, n) with the fewest total share units that serves `rate_rps` within `limit_ns`."""
        best = None
        best_key = None
        for c in cfgs:
            if not fills_in_time(c, rate_rps, limit_ns):
                continue
            n = max(1, math.ceil(rate_rps / c.capacity_rps(self.target_utilisation) - 1e-9))
            key = (n * c.share_units, c.latency_ns)
            if best_key is None or key < best_key:
                best, best_key = (c, n), key
        return best

    def _setup(self, view: ClusterView, st: PoolState) -> dict[str, tuple[Config, int]]:
        if self.rates_rps is None:
            raise UserError("policy 'static': no offered rates; it is planned offline, run it through "
                            "`gpufaas sim` or set params: static: {rates_rps: {workflow: rps}}")
        rates = function_rates_rps(view, self.rates_rps)
        plan = {}
        for fname in view.functions:
            if rates[fname] <= 0:
                continue
            limit = self.limit_ns(st, fname)
            cfgs = self.offered_configs(view, st, fname)  # the configs that fit, else the fastest alone
            choice = self.plan_for(cfgs, rates[fname], limit)
            if choice is None:
                c = min(cfgs, key=lambda x: x.latency_ns)
                choice = (c, max(1, math.ceil(rates[fname] / c.capacity_rps(self.target_utilisation))))
            plan[fname] = choice
        return plan

    def _scale(self, view: ClusterView, now_ns: int, st: PoolState, fname: str,
               live: list[Instance]) -> tuple[list[Config], list[Instance]]:
        if fname not in st.plan:
            return [], []
        cfg, n = st.plan[fname]
        return fixed_pool(cfg, n, live)

    def _bootstrap(self, view: ClusterView, st: PoolState, fname: str) -> list[Config]:
        return []
