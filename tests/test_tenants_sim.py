"""Tenants in the simulator (issue 13, items 4-7): weighted fair share and share caps in the controller for
every policy, batch work beside realtime work, the scenario's `tenants:` and `tenant:`, `gpufaas sim
--tenants/--classes`, and the per_tenant / per_class figures of the report."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import SCENARIOS

from gpufaas.gateway.cli import main
from gpufaas.gateway.tenants import Limits
from gpufaas.loadgen.scenario import load_scenario
from gpufaas.loadgen.simdriver import run_scenario
from gpufaas.platform.errors import SpecError
from gpufaas.platform.policy.registry import builtin_registry
from gpufaas.platform.tenancy import Tenancy, TenantShare, weighted_max_min

NOISY = SCENARIOS / "noisy-tenant.yaml"
HYBRID = SCENARIOS / "hybrid.yaml"


def scenario(path, seconds=None, **update):
    sc = load_scenario(path)
    if seconds is not None:
        update["duration_s"] = seconds
    return sc.model_copy(update=update) if update else sc


# ---------------------------------------------------------------- the rule


def test_weighted_max_min_fills_by_weight_up_to_demand():
    # a tenant that needs less than its share leaves the rest to the others (work-conserving)
    assert weighted_max_min(4.0, {"a": 1, "b": 1}, {"a": 0.5, "b": math.inf}) == {"a": 0.5, "b": 3.5}
    # both want more than there is: split by weight
    got = weighted_max_min(4.0, {"a": 1, "b": 3}, {"a": math.inf, "b": math.inf})
    assert got == pytest.approx({"a": 1.0, "b": 3.0})
    # a demand between the equal split and everything
    assert weighted_max_min(6.0, {"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 2.5, "c": math.inf}) == pytest.approx(
        {"a": 1.0, "b": 2.5, "c": 2.5})


def test_tenant_share_refuses_bad_values():
    with pytest.raises(ValueError, match="weight"):
        TenantShare(weight=0)
    with pytest.raises(ValueError, match="max_share_units"):
        TenantShare(max_share_units=0)


# ---------------------------------------------------------------- fairness targets


@pytest.mark.slow  # a simulated run of tens of seconds: `make test`, not `make test-fast`
@pytest.mark.parametrize("policy", ["esg", "static"])
def test_noisy_tenant_keeps_quiet_at_its_alone_hit_and_stays_work_conserving(policy):
    sc = scenario(NOISY)
    both = run_scenario(sc, policy)
    alone = run_scenario(sc, policy, tenants=("quiet",))
    quiet, noisy = both["per_tenant"]["quiet"], both["per_tenant"]["noisy"]
    assert quiet["slo_hit_rate"] >= alone["per_tenant"]["quiet"]["slo_hit_rate"] - 0.02
    weight = sc.tenants["noisy"].weight / sum(t.weight for t in sc.tenants.values())
    assert noisy["gpu_seconds_busy"] > weight * both["cost"]["gpu_seconds_busy"]


@pytest.mark.slow  # a simulated run of tens of seconds: `make test`, not `make test-fast`
def test_without_the_controllers_fair_share_esg_lets_the_noisy_tenant_push_the_quiet_one_down(monkeypatch):
    """The rule is what holds the quiet tenant up: the same run with tenancy switched off misses the target."""
    sc = scenario(NOISY)
    alone = run_scenario(sc, "esg", tenants=("quiet",))["per_tenant"]["quiet"]["slo_hit_rate"]
    refresh = Tenancy.refresh

    def off(self):
        refresh(self)
        self.active = False

    monkeypatch.setattr(Tenancy, "refresh", off)
    both = run_scenario(sc, "esg")
    assert both["per_tenant"]["quiet"]["slo_hit_rate"] < alone - 0.02


@pytest.mark.slow  # a simulated run of tens of seconds: `make test`, not `make test-fast`
def test_a_lone_tenant_uses_more_than_its_weight():
    """Work conservation: with the quiet tenant's streams left out, the noisy one holds more than half the
    cluster (its weight's share) on average."""
    sc = scenario(NOISY)
    r = run_scenario(sc, "esg", tenants=("noisy",))
    window_s = sc.duration_s - sc.effective_warmup_s()
    gpus = sum(n.gpus for n in sc.cluster.nodes)
    assert r["per_tenant"]["noisy"]["gpu_seconds_allocated"] > 0.5 * gpus * window_s


@pytest.mark.slow  # a simulated run of tens of seconds: `make test`, not `make test-fast`
@pytest.mark.parametrize("cap", [3, 7, 12])
def test_max_share_units_is_never_exceeded(cap, monkeypatch):
    """A property over every instance the controller starts: the capped tenant's units never pass its cap,
    and Starts beyond it are refused with the quota as the reason."""
    sc = scenario(NOISY, 12)
    sc = sc.model_copy(update={"tenants": {**sc.tenants, "noisy": Limits(weight=1, max_share_units=cap)}})
    peak = {"units": 0}
    hold = Tenancy.hold

    def checked(self, inst, sign):
        hold(self, inst, sign)
        units = self.held_units.get("noisy", 0)
        assert units <= cap, f"noisy holds {units} units, cap {cap}"
        peak["units"] = max(peak["units"], units)

    monkeypatch.setattr(Tenancy, "hold", checked)
    reasons = {}
    r = run_scenario(sc, "esg", check_invariants=True, on_event=lambda ctl: reasons.update(ctl.acct.refusal_reasons))
    assert peak["units"] > 0
    assert reasons.get("tenant quota", 0) > 0  # the noisy tenant wanted more than its cap
    assert r["per_tenant"]["quiet"]["invocations"] > 0


@pytest.mark.slow  # a simulated run of tens of seconds: `make test`, not `make test-fast`
@pytest.mark.parametrize("policy", builtin_registry().names())
def test_every_policy_runs_a_multi_tenant_scenario_without_over_commit(policy):
    r = run_scenario(scenario(NOISY, 12), policy, check_invariants=True, check_purity=True)
    assert r["completed"] + r["failed"] + r["rejected"] + r["timed_out"] == r["invocations"] > 0
    assert set(r["per_tenant"]) == {"quiet", "noisy"}


# ---------------------------------------------------------------- realtime beside batch


@pytest.mark.slow  # a simulated run of tens of seconds: `make test`, not `make test-fast`
@pytest.mark.parametrize("policy", ["esg", "static"])
def test_batch_fills_what_realtime_leaves_without_hurting_it(policy):
    sc = scenario(HYBRID)
    both = run_scenario(sc, policy)
    rt_alone = run_scenario(sc, policy, classes=("realtime",))
    assert both["per_class"]["realtime"]["slo_hit_rate"] >= rt_alone["slo_hit_rate"] - 0.01
    assert both["per_class"]["batch"]["slo_hit_rate"] >= 0.95  # a batch deadline is its SLO
    window_s = sc.duration_s - sc.effective_warmup_s()
    gpus = sum(n.gpus for n in sc.cluster.nodes)
    idle = gpus * window_s - rt_alone["cost"]["gpu_seconds_busy"]
    assert both["cost"]["gpu_seconds_busy"] - rt_alone["cost"]["gpu_seconds_busy"] >= 0.5 * idle


# ---------------------------------------------------------------- the report


@pytest.mark.parametrize("path,policy", [(NOISY, "esg"), (HYBRID, "static")])
def test_per_tenant_and_per_class_add_up_to_the_totals(path, policy):
    r = run_scenario(scenario(path, 10), policy)
    for table in (r["per_tenant"], r["per_class"]):
        assert sum(v["invocations"] for v in table.values()) == r["invocations"]
        assert sum(v["gpu_seconds_busy"] for v in table.values()) == pytest.approx(r["cost"]["gpu_seconds_busy"], abs=0.01)
    pt = r["per_tenant"].values()
    assert sum(v["gpu_seconds_allocated"] for v in pt) == pytest.approx(r["cost"]["gpu_seconds_allocated"], abs=0.01)
    assert sum(v["cost"]["allocated_usd"] for v in pt) == pytest.approx(r["cost"]["allocated_usd"], abs=1e-5)
    assert sum(v["cost"]["busy_usd"] for v in pt) == pytest.approx(r["cost"]["busy_usd"], abs=1e-5)
    assert sum(v["rejected"] for v in pt) == r["rejected"]


@pytest.mark.parametrize("limits", [{"max_concurrency": 20}, {"rate_rps": 500}])
def test_admission_limits_refuse_at_arrival_and_count_as_rejected(limits):
    sc = scenario(NOISY, 10)
    sc = sc.model_copy(update={"tenants": {**sc.tenants, "noisy": Limits(**limits)}})
    r = run_scenario(sc, "static")
    refused = r["admission_rejected"]
    assert set(refused) == set(limits) and all(n > 0 for n in refused.values())
    assert r["per_tenant"]["noisy"]["rejected"] >= sum(refused.values())
    assert r["per_tenant"]["quiet"]["rejected"] == 0  # the quiet tenant has no limit


# ---------------------------------------------------------------- the scenario format and the CLI


def test_each_tenant_runs_its_own_copy_of_a_workflow(tmp_path):
    p = tmp_path / "two.yaml"
    p.write_text(NOISY.read_text().replace("../../functions", str(SCENARIOS.parent.parent / "functions"))
                 .replace("workflow: scene-classify", "workflow: image-classify"))
    sc = load_scenario(p)
    names = {w.name: w.tenant for w in sc.workflows}
    # the original image-classify is dropped (only copies run it); scene-classify, which no stream invokes, stays
    assert names == {"quiet/image-classify": "quiet", "noisy/image-classify": "noisy", "scene-classify": "default"}
    fns = {f.name: f.tenant for f in sc.functions}
    assert fns["noisy/resnet50"] == "noisy" and fns["quiet/resnet50"] == "quiet" and "resnet50" not in fns


def test_a_stream_of_an_undeclared_tenant_is_refused(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text(NOISY.read_text().replace("../../functions", str(SCENARIOS.parent.parent / "functions"))
                 .replace("tenant: quiet,", "tenant: qiuet,"))
    with pytest.raises(SpecError, match="tenant 'qiuet' is not declared"):
        load_scenario(p)


def _sim(argv, capsys):
    code = 0
    try:
        main(["sim", *argv])
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_sim_tenants_and_classes_keep_only_those_streams(capsys):
    code, out, err = _sim(["--scenario", "noisy-tenant", "--policy", "static", "--tenants", "quiet", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)["results"][0]
    assert set(r["per_tenant"]) == {"quiet"}
    code, out, err = _sim(["--scenario", "hybrid", "--policy", "static", "--classes", "realtime", "--json"], capsys)
    assert code == 0, err
    r = json.loads(out)["results"][0]
    assert set(r["per_class"]) == {"realtime"}


@pytest.mark.parametrize("flags,message", [
    (["--tenants", "nobody"], "--tenants: scenario noisy-tenant has no stream of tenant 'nobody'"),
    (["--classes", "bulk"], "--classes: 'bulk' is not a class"),
    (["--tenants", ","], "--tenants: give at least one name"),
    (["--classes", "batch"], "nothing of scenario noisy-tenant is left"),
])
def test_sim_refuses_bad_filters_before_any_run(flags, message, capsys):
    code, out, err = _sim(["--scenario", "noisy-tenant", "--policy", "static", *flags], capsys)
    assert code == 2
    assert message in err
