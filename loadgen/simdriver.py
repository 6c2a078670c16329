"""The simulation driver: runs a `Scenario` under a policy on the virtual clock and reports.

It builds the same `Controller` the gateway uses, with a `VirtualClock` and the `sim` backend, feeds
it the workload's arrivals one event at a time (streamed, never materialised), drains in-flight work,
stops every instance and returns the accounting report, which leaves out the scenario's warm-up
(`Accounting.warmup_end_ns`). Profiles come from the scenario's own `profiles:` folder (and any
folders the caller adds, such as `gpufaas sim --profiles`) before the shipped ones.

Tenants: the controller gets the scenario's weights and share caps (`Controller.set_tenants`); a tenant's
`max_concurrency` and `rate_rps` are applied at arrival by the gateway's own admission code
(`gateway.tenants.Admission`), and an invocation refused there counts as rejected with the limit it hit.
With `queue_bounds`, arrivals also go through the gateway's workflow queue bound (`platform.admission.
QueueBounds`, the one implementation both use; checked before the tenant's limits, as `Platform._admit`
does); an invocation refused there counts as rejected with the limit "queue". Off by default: `gpufaas sim`
and its golden files model no admission beyond the tenants' limits.
`tenants`/`classes` keep only those tenants' streams, or only those classes' (`gpufaas sim --tenants
--classes`), each stream with the arrivals it has in the whole run.

Who calls it: `gpufaas sim`, `gpufaas bench sim`, the tests.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from gpufaas.gateway.tenants import Admission, QuotaExceeded, Tenant
from gpufaas.loadgen.scenario import Scenario, add_variant_profiles, target_filter, tenant_shares
from gpufaas.loadgen.workload import arrivals
from gpufaas.platform.admission import QueueBounds, cluster_units, queue_floor
from gpufaas.platform.backends.sim import SimBackend
from gpufaas.platform.clock import NS_PER_MS, NS_PER_S, VirtualClock, perf_ns
from gpufaas.platform.controller import Controller
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.profiles import Profiles
from gpufaas.platform.residency.registry import make_residency
from gpufaas.platform.runtime import Invocation


def build_policy(scenario: Scenario, name: str, load: float = 1.0, keep: frozenset[int] | None = None, **overrides: Any):
    """The named policy with the scenario's parameters for it; policies whose constructor takes
    `rates_rps` (offline-tuned ones) get the workload's mean rate per workflow at this load (of the
    targets in `keep`, when given: `target_filter`)."""
    reg = builtin_registry()
    params = dict(scenario.params.get(name, {}))
    params.update(overrides)
    policy = reg.make(name, **params)
    if hasattr(policy, "tune"):
        policy.tune(scenario=scenario, rates_rps=scenario.workload.mean_rates_rps(load, scenario.duration_s, keep))
    return policy


def scenario_profiles(scenario: Scenario, extra_dirs: Iterable[str | Path] = ()) -> Profiles:
    """The profiles a scenario runs with: `extra_dirs` first (flags beat the file), then the scenario's
    `profiles:` folder, then the shipped ones. Who calls it: `build_controller`, `gpufaas sim` (once per
    command, so a sweep loads the folders once)."""
    dirs = [*extra_dirs, *([scenario.profiles] if scenario.profiles else [])]
    return add_variant_profiles(scenario, Profiles.with_dirs(dirs))


def build_controller(scenario: Scenario, policy: Any, clock: VirtualClock, profiles: Profiles | None = None,
                     check_purity: bool = False, residency: str | None = None,
                     sim_backend: Callable[[VirtualClock], SimBackend] = SimBackend) -> Controller:
    """A controller on the sim backend (`sim_backend(clock)`) with the scenario's functions and workflows
    deployed; `profiles` defaults to `scenario_profiles(scenario)`, `residency` to the scenario's."""
    ctl = Controller(scenario.cluster, profiles or scenario_profiles(scenario), policy, sim_backend(clock), clock,
                     keep_alive_s=scenario.keep_alive_s, check_purity=check_purity,
                     residency=make_residency(residency or scenario.residency))
    for f in scenario.functions:
        ctl.deploy_function(f)
    for w in scenario.workflows:
        ctl.deploy_workflow(w)
    if scenario.tenants:
        ctl.set_tenants(tenant_shares(scenario))
    return ctl


def run_scenario(scenario: Scenario, policy_name: str, *, seed: int | None = None, load: float = 1.0,
                 check_purity: bool = False, check_invariants: bool = False, policy_params: dict | None = None,
                 on_event: Any = None, profiles: Profiles | None = None, tenants: tuple[str, ...] = (),
                 classes: tuple[str, ...] = (), on_end: Callable[[Invocation], None] | None = None,
                 residency: str | None = None, sim_backend: Callable[[VirtualClock], SimBackend] = SimBackend,
                 queue_bounds: bool = False, on_refused: Callable[[Invocation, str], None] | None = None,
                 arrival_lag_ns: Callable[[int, int], int] | None = None) -> dict:
    """Simulate `scenario` under `policy_name` and `residency` (default: the scenario's); returns the report
    dict of `gpufaas sim --json`, which names its `residency`.
    `on_end(invocation)` is called as each submitted invocation ends, `on_refused(invocation, limit)` as one is
    refused at arrival (`gpufaas fidelity`'s per-workflow figures). `queue_bounds` applies the gateway's
    workflow queue bound at arrival (module doc).
    `profiles` defaults to `scenario_profiles(scenario)`. The report leaves out the warm-up
    (`Scenario.effective_warmup_s`; SpecError when it is not shorter than the duration). `tenants` and
    `classes` keep only those tenants' or classes' streams (`target_filter`; UserError naming the flag).
    `sim_backend` builds the backend (`gpufaas fidelity`: one with the live platform's measured costs).
    `arrival_lag_ns(t_ns, stream_index)`, when given, delays each arrival scheduled at `t_ns` by what it returns
    (`gpufaas fidelity`: each invocation's measured live send lag); arrivals keep their order."""
    t0 = perf_ns()
    warmup_end_ns = int(scenario.effective_warmup_s() * NS_PER_S)
    keep = target_filter(scenario, tenants, classes)
    clock = VirtualClock()
    policy = build_policy(scenario, policy_name, load, keep, **(policy_params or {}))
    residency = residency or scenario.residency
    ctl = build_controller(scenario, policy, clock, profiles, check_purity=check_purity, residency=residency, sim_backend=sim_backend)
    ctl.acct.warmup_end_ns = warmup_end_ns
    seed = scenario.seed if seed is None else seed
    targets = scenario.workload.targets()  # streams, then traces' workflows (loadgen.workload.arrivals)
    slos = [t.slo_ms for t in targets]
    names = [t.workflow for t in targets]
    it = arrivals(scenario.workload, seed, scenario.duration_s, load, keep)
    submit = ctl.submit
    # NOTE: only tenants with an admission limit go through Admission; the others keep the plain submit
    limited = {name: Tenant(name, False, lim) for name, lim in scenario.tenants.items()
               if lim.max_concurrency is not None or lim.rate_rps is not None}
    gate = [limited.get(t.tenant) for t in targets]
    admission = Admission()
    bounds = QueueBounds() if queue_bounds else None
    if bounds is not None:  # the floor and SLO per stream: the cluster and the deployments are fixed for the run
        units = cluster_units(ctl.gpus)
        floors = [queue_floor(ctl.functions, ctl.workflows[n], units) for n in names]
        bound_slos = [slo or ctl.workflows[n].spec.slo_ms for n, slo in zip(names, slos)]

    def ended(inv: Invocation) -> None:
        if inv.tenant in limited:
            admission.release(inv.tenant)
        if bounds is not None:
            bounds.ended(inv, clock.now_ns())
        if on_end is not None:
            on_end(inv)

    def refuse(stream_index: int, limit: str, reason: str) -> None:
        inv = ctl.refuse_invocation(names[stream_index], limit, reason, slos[stream_index])
        if on_refused is not None:
            on_refused(inv, limit)

    def admit(stream_index: int) -> bool:
        """`Platform._admit`'s order: the workflow's queue bound, then the tenant's limits, then count it in."""
        name = names[stream_index]
        now = clock.now_ns()
        if bounds is not None:
            full = bounds.check(name, bound_slos[stream_index], now, floors[stream_index])
            if full is not None:
                refuse(stream_index, "queue", full.message(name))
                return False
        tenant = gate[stream_index]
        if tenant is not None:
            try:
                admission.admit(tenant, now, 0.0)
            except QuotaExceeded as e:
                refuse(stream_index, e.limit, str(e))
                return False
        if bounds is not None:
            bounds.add(name, now)
        return True

    def arrive(stream_index: int) -> None:
        if admit(stream_index):
            submit(names[stream_index], slo_ms=slos[stream_index], on_done=ended)
        if check_invariants:
            ctl.check_invariants()
        nxt = next(it, None)
        if nxt is not None:
            call_at(due(nxt), arrive, nxt[1])

    def due(arrival: tuple[int, int]) -> int:
        """When an arrival reaches the controller: on schedule, or with `arrival_lag_ns` that much later (never
        before the previous one: a live loop that stalled hands over the requests it held in order)."""
        if arrival_lag_ns is None:
            return arrival[0]
        return max(arrival[0] + arrival_lag_ns(*arrival), clock.now_ns())

    # NOTE: the plain arrival (no admission gate, no invariant check), one event per simulated request: its
    # own closure, so that it costs one call of `submit` and nothing else (the one-function SimFaaS workload)
    def arrive_plain(stream_index: int) -> None:
        submit(names[stream_index], slo_ms=slos[stream_index], on_done=on_end)
        nxt = next(it, None)
        if nxt is not None:
            call_at(nxt[0], arrive_plain, nxt[1])

    call_at = clock.call_at_fast
    first = next(it, None)
    if first is not None:
        gated = check_invariants or bounds is not None or arrival_lag_ns is not None or any(g is not None for g in gate)
        call_at(due(first) if gated else first[0], arrive if gated else arrive_plain, first[1])
    end_ns = int(scenario.duration_s * NS_PER_S)
    clock.run(until_ns=end_ns)
    # drain: advance in 100 ms steps until nothing is in flight or the drain time is up
    limit_ns = end_ns + int(scenario.drain_s * NS_PER_S)
    t = end_ns
    while ctl.inflight and t < limit_ns:
        t = min(t + 100 * NS_PER_MS, limit_ns)
        clock.run(until_ns=t)
    ctl.timeout_pending(clock.now_ns() + 1, "still running when the simulation's drain time ended")
    if check_invariants:
        ctl.check_invariants()
    ctl.shutdown()
    report = {"policy": policy_name, "residency": residency, "load": load, "seed": seed}
    report.update(ctl.acct.report())
    report["sim_wall_s"] = round((perf_ns() - t0) / 1e9, 3)
    report["sim_end_s"] = round(clock.now_ns() / NS_PER_S, 3)
    report["events"] = clock.events_run
    if on_event is not None:
        on_event(ctl)
    return report
