"""The most any residency policy could save on a scenario: the idle share an oracle could release.

A residency policy decides only what an idle instance costs to keep (`platform/residency/`); it cannot
change what runs. An oracle that knew every next batch in advance would release an instance for each idle
gap longer than its cold start and start it again one cold start before that batch, saving (gap - cold
start) x its share of the GPU; a gap shorter than a cold start cannot be released without the next batch
waiting on a cold start (seconds: an SLO miss). Summed over the measured window and divided by what the
run allocated, that bounds the cost cut of every residency policy beside the same scheduling policy, with
the scheduling policy's own decisions held as they were.

    python -m gpufaas.loadgen.residency_bound SCENARIO [--policy esg] [--seed N] [--load L]

Who calls it: the README's Residency section (why no residency policy cuts esg's cost on chain, video and
mixed), and its test. Pure apart from the simulation it runs.
"""

from __future__ import annotations

import json
import sys

import click

from gpufaas.loadgen.scenario import Scenario, load_scenario, resolve_scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.platform.backends.sim import SimBackend
from gpufaas.platform.clock import NS_PER_S, Clock
from gpufaas.platform.errors import UserError
from gpufaas.platform.residency.interface import cold_start_ns
from gpufaas.platform.runtime import Batch, Instance


class IdleGapBackend(SimBackend):
    """The shipped sim backend (unchanged timings) that also measures each instance's idle gaps: from ready
    or a batch's end to its next batch, or to its stop. `idle_gpu_ns`: every gap x share; `releasable_gpu_ns`:
    the part of each gap beyond one cold start (the oracle's saving). Only the part after `from_ns` counts
    (the report's warm-up is left out the same way). Who builds it: `residency_bound`."""

    def __init__(self, clock: Clock, from_ns: int) -> None:
        super().__init__(clock)
        self.from_ns = from_ns
        self._free_since: dict[int, int] = {}
        self.idle_gpu_ns = 0.0
        self.releasable_gpu_ns = 0.0
        self.gaps = 0
        self.longest_ns = 0

    def _gap(self, inst: Instance, end_ns: int) -> None:
        start = self._free_since.pop(inst.id, None)
        if start is None:
            return
        start = max(start, self.from_ns)
        if end_ns <= start:
            return
        share = inst.share_units / inst.gpu.share_units
        self.gaps += 1
        self.longest_ns = max(self.longest_ns, end_ns - start)
        self.idle_gpu_ns += (end_ns - start) * share
        self.releasable_gpu_ns += max(0, end_ns - start - cold_start_ns(inst.function, inst.gpu.type_name)) * share

    def _ready(self, inst: Instance) -> None:
        self._free_since[inst.id] = self.clock.now_ns()  # before the controller may hand it a batch
        super()._ready(inst)

    def _done(self, inst: Instance, batch: Batch) -> None:
        self._free_since[inst.id] = self.clock.now_ns()
        super()._done(inst, batch)

    def submit(self, inst: Instance, batch: Batch) -> None:
        self._gap(inst, batch.start_ns)
        super().submit(inst, batch)

    def stop(self, inst: Instance) -> None:
        self._gap(inst, self.clock.now_ns())
        super().stop(inst)


def residency_bound(sc: Scenario, policy: str = "esg", seed: int | None = None, load: float = 1.0) -> dict:
    """Simulate `sc` under `policy` and return its allocated and idle GPU-seconds and the oracle residency's
    saving, absolute and as a fraction of allocated (`max_cut`)."""
    warmup_ns = int(sc.effective_warmup_s() * NS_PER_S)
    backends: list[IdleGapBackend] = []

    def backend(clock: Clock) -> SimBackend:
        b = IdleGapBackend(clock, warmup_ns)
        backends.append(b)
        return b

    report = run_scenario(sc, policy, seed=seed, load=load, sim_backend=backend)
    b = backends[0]
    allocated = report["cost"]["gpu_seconds_allocated"]
    releasable = b.releasable_gpu_ns / NS_PER_S
    return {"scenario": sc.name, "policy": policy, "seed": report["seed"], "load": load, "slo_hit_rate": report["slo_hit_rate"],
            "gpu_seconds_allocated": allocated, "gpu_seconds_busy": report["cost"]["gpu_seconds_busy"],
            "gpu_seconds_idle": round(b.idle_gpu_ns / NS_PER_S, 3), "idle_gaps": b.gaps,
            "longest_gap_s": round(b.longest_ns / NS_PER_S, 3),
            "gpu_seconds_releasable": round(releasable, 3),
            "max_cut": round(releasable / allocated, 4) if allocated > 0 else 0.0}


@click.command()
@click.argument("scenario")
@click.option("--policy", default="esg", show_default=True, help="the scheduling policy whose decisions are held fixed")
@click.option("--seed", type=int, default=None, help="arrival seed (default: the scenario's)")
@click.option("--load", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="multiply every stream's rate by this")
def main(scenario: str, policy: str, seed: int | None, load: float) -> None:
    """Print, as one JSON object, the most any residency policy could cut from SCENARIO's allocated cost
    under POLICY: the idle share in gaps longer than a cold start (`max_cut`, a fraction of allocated)."""
    try:
        print(json.dumps(residency_bound(load_scenario(resolve_scenario(scenario, "SCENARIO")), policy, seed, load)))
    except UserError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
