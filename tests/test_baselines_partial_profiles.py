"""Profiles that are not a full batch x share grid: `FunctionRt` keeps what its profile covers per GPU
type, and every baseline runs on the configurations that are offered (MIG-slice-only GPUs, profiles
that cover part of the declared shares, heterogeneous clusters)."""

from __future__ import annotations

import pytest

from gpufaas.loadgen.scenario import Scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.platform.errors import ProfileError, SpecError
from gpufaas.platform.policy.baselines import fastest_config, planning_types
from gpufaas.platform.policy.batch1_wholegpu import whole_units
from gpufaas.platform.profiles import ColdStartProfile, MemoryProfile, Profile, Profiles
from gpufaas.platform.runtime import FunctionRt
from gpufaas.platform.specs import ClusterSpec
from tests.helpers import function

BASELINES = ["infless", "fastgshare", "static", "batch1-wholegpu"]
MIG = {"name": "A100-MIG", "memory_mb": 40960, "price_per_hour_usd": 5.12, "share_units": 7}
A100 = {"name": "A100-80GB", "memory_mb": 81920, "price_per_hour_usd": 5.12, "share_units": 10}
SEVENTHS = [1 / 7, 2 / 7, 3 / 7]


def profile(model: str, gpu_type: str, shares: list[float], batches=(1, 2, 4, 8), base_ms: float = 4.0) -> Profile:
    """A synthetic profile: latency ~ base x (1 + batch/4) / share, on the given grid only."""
    return Profile(
        model=model, gpu_type=gpu_type, source="synthetic: test grid", batches=list(batches), shares=list(shares),
        latency_ms=[[round(base_ms * (1 + b / 4) / (s * 7), 3) for s in shares] for b in batches],
        memory=MemoryProfile(instance_mb=1000, per_item_mb=10),
        cold_start=ColdStartProfile(container_ms=300, runtime_init_ms=500, model_load_ms=200, source="synthetic"))


def cluster(*nodes: tuple[dict, int]) -> ClusterSpec:
    types = list({t["name"]: t for t, _ in nodes}.values())
    return ClusterSpec.model_validate({"gpu_types": types, "nodes": [
        {"name": f"node-{i}", "gpu_type": t["name"], "gpus": n} for i, (t, n) in enumerate(nodes)]})


def mig_profiles() -> Profiles:
    """The shipped profiles plus two models profiled on A100-MIG slices 1/7..3/7 only."""
    p = Profiles.shipped()
    p.add(profile("pre-mig", "A100-MIG", SEVENTHS, base_ms=0.5))
    p.add(profile("cls-mig", "A100-MIG", SEVENTHS, base_ms=4.0))
    return p


def scenario(cl: ClusterSpec, functions, rate_rps: float = 40.0, duration_s: float = 8.0, slo_ms: float = 400) -> Scenario:
    wf = {"name": "wf", "slo_ms": slo_ms, "stages": [
        {"name": "pre", "function": functions[0].name},
        {"name": "cls", "function": functions[1].name, "after": ["pre"]}]}
    return Scenario.model_validate({
        "name": "partial", "duration_s": duration_s, "warmup_s": 0, "drain_s": 10, "keep_alive_s": 5,
        "cluster": cl.model_dump(), "functions": [f.model_dump() for f in functions], "workflows": [wf],
        "workload": {"streams": [{"workflow": "wf", "arrival": "poisson", "rate_rps": rate_rps}]}})


def run_all(sc: Scenario, profiles: Profiles) -> dict[str, dict]:
    out = {}
    for name in BASELINES:
        r = run_scenario(sc, name, profiles=profiles, check_purity=True, check_invariants=True)
        # a Start or Dispatch of a (batch, share) the function does not offer there would be refused
        assert r["refused_decisions"] == 0, name
        assert r["completed"] + r["failed"] + r["rejected"] + r["timed_out"] == r["invocations"], name
        # the first ~2 s are cold starts longer than the 400 ms SLO: the pool baselines reject those jobs
        assert r["failed"] == 0 and r["completed"] >= 0.5 * r["invocations"], (name, r)
        out[name] = r
    return out


# ---------------------------------------------------------------------- FunctionRt


def test_mig_only_profile_offers_the_covered_slices_only():
    fn = FunctionRt(function("c", model="cls-mig", shares=[*SEVENTHS, 1.0], batch_sizes=[1, 2, 4, 8, 16]),
                    cluster((MIG, 2)), mig_profiles(), 60)
    assert fn.share_units == {"A100-MIG": (1, 2, 3)}
    assert fn.batch_sizes == (1, 2, 4, 8)
    assert "1.0" in fn.uncovered["A100-MIG"] and "16" in fn.uncovered["A100-MIG"]
    assert fastest_config(fn, "A100-MIG", 7, 10 ** 9).share_units == 3  # batch 1 on the largest offered slice
    assert fastest_config(fn, "A100-MIG", 7, 10 ** 9).batch == 1
    assert whole_units(fn, "A100-MIG") == 3


def test_a_profile_covering_part_of_the_declared_shares():
    p = Profiles()
    p.add(profile("half", "A100-80GB", [0.2, 0.5], batches=(1, 8)))
    fn = FunctionRt(function("h", model="half"), cluster((A100, 1)), p, 60)  # declares 0.2..1.0, batches 1..32
    assert fn.share_units == {"A100-80GB": (2, 3, 4, 5)}
    assert fn.batch_sizes == (1, 2, 4, 8)


def test_batch_outside_the_profile_is_dropped_not_an_error():
    # replaces the old expectation that any declared (batch, share) outside the profile raises
    fn = FunctionRt(function("f", batch_sizes=[1, 512]), cluster((A100, 1)), Profiles.shipped(), 60)
    assert fn.batch_sizes == (1,)
    assert "512" in fn.uncovered["A100-80GB"]


def test_nothing_covered_names_the_function_profile_range_and_fix():
    p = Profiles()
    p.add(profile("small", "A100-MIG", SEVENTHS))
    with pytest.raises(SpecError, match=r"function f: no declared \(batch, share\) lies inside its profile.*"
                                        r"small@A100-MIG measures batch sizes 1\.\.8, shares 0\.143\.\.0\.429.*"
                                        r"declare batch_sizes and shares inside a measured range"):
        FunctionRt(function("f", model="small", shares=[1.0]), cluster((MIG, 1)), p, 60)


def test_no_profile_anywhere_and_shares_no_gpu_can_express_still_fail():
    with pytest.raises(ProfileError, match="no profile for model 'nope'"):
        FunctionRt(function("f", model="nope"), cluster((A100, 1)), Profiles.shipped(), 60)
    with pytest.raises(SpecError, match=r"shares: 0.25 is not a multiple of 1/10"):
        FunctionRt(function("f", shares=[0.25, 1.0]), cluster((A100, 1)), Profiles.shipped(), 60)


def test_heterogeneous_cluster_keeps_the_types_with_a_profile():
    p = mig_profiles()  # cls-mig is profiled on A100-MIG only; the cluster's first GPUs are A100-80GB
    cl = cluster((A100, 1), (MIG, 1))
    fn = FunctionRt(function("c", model="cls-mig", shares=[*SEVENTHS, 0.5, 1.0]), cl, p, 60)
    assert set(fn.tables) == {"A100-MIG"} and fn.share_units["A100-MIG"] == (1, 2, 3)
    assert "no profile for model 'cls-mig' on GPU type 'A100-80GB'" in fn.uncovered["A100-80GB"]
    both = Profiles.shipped()
    both.add(profile("resnet50", "A100-MIG", SEVENTHS))
    r = FunctionRt(function("r", shares=[*SEVENTHS, 0.5, 1.0]), cl, both, 60)
    assert r.share_units == {"A100-80GB": (5, 10), "A100-MIG": (1, 2, 3)}


# ---------------------------------------------------------------------- the baselines


def test_every_baseline_runs_on_mig_slices_only():
    fns = [function("pre", model="pre-mig", shares=[*SEVENTHS, 1.0]),
           function("cls", model="cls-mig", shares=[*SEVENTHS, 1.0])]
    results = run_all(scenario(cluster((MIG, 2)), fns), mig_profiles())
    assert results["batch1-wholegpu"]["slo_hit_rate"] > 0.5


def test_every_baseline_runs_when_the_profile_covers_some_shares():
    p = Profiles.shipped()
    p.add(profile("half", "A100-80GB", [0.2, 0.5], batches=(1, 8)))
    fns = [function("pre", model="preprocess"), function("h", model="half")]
    run_all(scenario(cluster((A100, 2)), fns), p)


def test_every_baseline_plans_each_function_on_a_type_it_has_a_profile_for():
    p = mig_profiles()
    cl = cluster((A100, 1), (MIG, 2))
    fns = [function("pre", model="preprocess"), function("cls", model="cls-mig", shares=SEVENTHS)]
    results = run_all(scenario(cl, fns), p)
    assert all(r["completed"] > 0 for r in results.values())


def test_planning_prefers_the_first_gpus_type():
    from tests.helpers import chain
    from gpufaas.platform.backends.fake import FakeBackend
    from gpufaas.platform.clock import VirtualClock
    from gpufaas.platform.controller import Controller
    from gpufaas.platform.policy.infless import InflessPolicy

    profiles = Profiles.shipped()
    profiles.add(profile("resnet50", "A100-MIG", SEVENTHS))
    profiles.add(profile("cls-mig", "A100-MIG", SEVENTHS))
    ctl = Controller(cluster((A100, 1), (MIG, 1)), profiles, InflessPolicy(), FakeBackend(), VirtualClock())
    ctl.deploy_function(function("r", shares=[*SEVENTHS, 0.5, 1.0]))
    ctl.deploy_function(function("c", model="cls-mig", shares=SEVENTHS))
    ctl.deploy_workflow(chain("wf", ["r", "c"]))
    assert planning_types(ctl.view) == {"r": ("A100-80GB", 10), "c": ("A100-MIG", 7)}
