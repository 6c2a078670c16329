"""`fastgshare`: our reading of FaST-GShare (Gu, Zhu, Wang, Chadha, Gerndt, "FaST-GShare: Enabling
Efficient Spatio-Temporal GPU Sharing in Serverless Computing for Deep Learning Inference", ICPP 2023,
arXiv 2309.00558).

What FaST-GShare decides, and what this module keeps:
- FaST-Profiler measures each function's throughput under every spatio-temporal allocation offline;
  FaST-Scheduler gives each function one fixed allocation, the one with the highest throughput per
  unit of GPU resource among those that meet the function's latency SLO.
- Heuristic autoscaling by load: the number of instances (pods) follows the measured request rate
  divided by one instance's profiled throughput.
- Node/GPU selection that packs instances onto GPUs to keep them well used (here: best fit on free
  share, then memory).

What this project simplified or chose:
- A spatio-temporal allocation (SM partition x time quota) is modelled as one GPU share, the
  platform's MPS/MIG-style share units.
- No per-invocation batch choice: every instance has one fixed maximum batch, chosen offline with its
  share, and runs whatever is queued up to it as soon as it is idle (opportunistic batching, no
  batch-fill wait). That is the most favourable reading of a server that does not pick batch sizes.
- For workflows, each function's SLO is its stage's slice of the end-to-end SLO (by latency weight,
  as `infless` does); no pipeline awareness.
- Model sharing between instances (memory) is not modelled; each instance reserves its own memory.

Tuned: `slack` 0.8 (the config's latency may use 80% of the stage budget, the rest absorbs queueing)
and `target_utilisation` 0.8 (instances are added at 80% of profiled full-batch throughput), the same
defaults as `infless`; settable per scenario under `params: {fastgshare: {...}}` or with `--set fastgshare.KEY=VALUE`.
"""

from __future__ import annotations

import math

from gpufaas.platform.policy.baselines import Config, PoolPolicy, PoolState, fixed_pool
from gpufaas.platform.runtime import Instance
from gpufaas.platform.views import ClusterView


class FastGSharePolicy(PoolPolicy):
    """One fixed (batch, share) per function, best throughput per share; instance count follows load.

    Who calls it: the controller (`schedule`), through the registry name `fastgshare`. State:
    `PoolState` whose `plan` maps function -> its fixed `Config`.
    """

    name = "fastgshare"
    batch_fill = False

    def choose(self, cfgs: list[Config]) -> Config:
        """The config with the highest profiled throughput per share unit (ties: lower latency)."""
        return max(cfgs, key=lambda c: (c.batch / (c.latency_ns * c.share_units), -c.latency_ns))

    def _setup(self, view: ClusterView, st: PoolState) -> dict[str, Config]:
        # offered_configs: the configs that fit the budget, else the fastest one alone
        return {fname: self.choose(self.offered_configs(view, st, fname)) for fname in view.functions}

    def _scale_for_rate(self, view: ClusterView, st: PoolState, fname: str, rate_rps: float,
                        live: list[Instance]) -> tuple[list[Config], list[Instance]]:
        cfg = st.plan[fname]
        n = math.ceil(rate_rps / cfg.capacity_rps(self.target_utilisation) - 1e-9)
        return fixed_pool(cfg, n, live)
