"""Typed policy parameters: every policy declares `Params`; scenarios' `params:`, `sim --set` and
`up --set` are checked against it before anything runs, with one line naming policy, key and range."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, strategies as st

from gpufaas.loadgen.scenario import load_scenario
from gpufaas.platform.errors import SpecError, UserError
from gpufaas.platform.policy.interface import Policy
from gpufaas.platform.policy.params import PolicyParams, allowed, parse_set
from gpufaas.platform.policy.registry import Registry, builtin_registry
from tests.helpers import run_cli

REG = builtin_registry()




@pytest.mark.parametrize("name", REG.names())
def test_every_policy_declares_params_and_conforms(name):
    cls = REG.policy_class(name)
    assert issubclass(cls.Params, PolicyParams)
    policy = REG.make(name)
    assert isinstance(policy, Policy)
    assert policy.params == cls.Params()  # the defaults live in one place: the model


@pytest.mark.parametrize("name", REG.names())
def test_every_bounded_parameter_is_refused_below_its_range_with_one_line(name):
    model = REG.policy_class(name).Params
    for key, field in model.model_fields.items():
        rule = allowed(model, key)
        if not rule.startswith((">", "in ")):
            continue
        lo = [m for m in field.metadata if hasattr(m, "ge") or hasattr(m, "gt")][0]
        below = (getattr(lo, "ge", None) if getattr(lo, "ge", None) is not None else lo.gt) - 1
        with pytest.raises(UserError) as e:
            REG.make(name, **{key: below})
        msg = str(e.value)
        assert "\n" not in msg and f"policy '{name}'" in msg and key in msg and f"got {below!r}" in msg


@pytest.mark.parametrize("name", REG.names())
def test_unknown_parameters_are_refused(name):
    with pytest.raises(UserError, match=f"policy '{name}': unknown parameter 'nope'"):
        REG.make(name, nope=1)


def test_messages_name_the_rule():
    with pytest.raises(UserError, match=r"policy 'esg': target_hit must be less than 1, got 1.0 \(parameters: .*target_hit in \[0.5, 1\)"):
        REG.make("esg", target_hit=1.0)
    with pytest.raises(UserError, match=r"split must be 'latency' or 'even', got 'x'"):
        REG.make("infless", split="x")
    assert REG.make("esg", epsilon=0).epsilon == 0.0 and REG.make("oracle", target_hit=0.9).target_hit == 0.9


@given(st.one_of(st.floats(allow_nan=True), st.text(max_size=5), st.none(), st.booleans(), st.integers()))
def test_any_value_is_accepted_or_refused_as_a_user_error(value):
    try:
        p = REG.make("esg", epsilon=value)
    except UserError as e:
        assert "policy 'esg': epsilon" in str(e)
    else:
        assert p.epsilon >= 0 and p.epsilon != float("inf")


def test_an_outside_policy_must_declare_params(tmp_path, monkeypatch):
    (tmp_path / "outside_policy.py").write_text(
        "class NoParams:\n    name = 'x'\n"
        "from gpufaas.platform.policy.params import PolicyParams\n"
        "class WithParams:\n    name = 'y'\n    class Params(PolicyParams):\n        k: int = 1\n"
        "    def __init__(self, **kw):\n        self.params = self.Params(**kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reg = Registry()
    with pytest.raises(UserError, match="declares no parameters; give the class a `Params`"):
        reg.make("outside_policy:NoParams")
    assert reg.make("outside_policy:WithParams", k=3).params.k == 3
    with pytest.raises(UserError, match="policy 'outside_policy:WithParams': unknown parameter 'z'"):
        reg.check("outside_policy:WithParams", {"z": 1})


def test_parse_set():
    assert parse_set(["esg.epsilon=0.01", "esg.target_hit=0.9", "infless.split=even", "infless.drop_late=false"]) == {
        "esg": {"epsilon": 0.01, "target_hit": 0.9}, "infless": {"split": "even", "drop_late": False}}
    assert parse_set(["pkg.mod:Cls.k=2"]) == {"pkg.mod:Cls": {"k": 2}}
    for bad in ("epsilon=1", "esg.epsilon", ".epsilon=1", "esg.=1"):
        with pytest.raises(UserError, match="expected POLICY.KEY=VALUE"):
            parse_set([bad])


def test_a_scenarios_params_are_checked_on_load_and_the_old_name_still_reads(tiny, tmp_path):
    data = yaml.safe_load(tiny.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**data, "params": {"esg": {"epsilon": -0.5}}}))
    with pytest.raises(SpecError, match=r"bad.yaml: params: policy 'esg': epsilon must be greater than or equal to 0"):
        load_scenario(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({**data, "params": {"esgg": {}}}))
    with pytest.raises(SpecError, match="params: unknown policy 'esgg'"):
        load_scenario(unknown)
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({**data, "policy_params": {"infless": {"tick_ms": 250}}}))
    assert load_scenario(old).params == {"infless": {"tick_ms": 250}}


def test_sim_set_is_checked_before_the_first_run_and_reaches_the_policy(tiny, capsys):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "esg,infless", "--set", "infless.tick_ms=-3"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "error: --set: policy 'infless': tick_ms must be greater than 0, got -3" in err
    code, _, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "esg", "--set", "static.tick_ms=3"], capsys)
    assert code == 2 and "policy 'static' is not in this run" in err
    # the same run with a parameter that changes what the policy does: a 50 ms scaling tick, not 500 ms
    runs = {}
    for extra in ([], ["--set", "fastgshare.tick_ms=50"]):
        code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "fastgshare", "--json", *extra], capsys)
        assert code == 0, err
        runs[bool(extra)] = json.loads(out)["results"][0]
    assert runs[True]["events"] > runs[False]["events"]  # ten times as many scaling ticks


def test_sim_names_a_shipped_scenario(capsys):
    code, _, err = run_cli(["sim", "--scenario", "no-such-scenario"], capsys)
    assert code == 2 and "give a file path or one of" in err and "chain" in err


def test_up_set_is_checked_before_the_gateway_starts(capsys):
    code, _, err = run_cli(["up", "--port", "0", "--set", "esg.target_hit=2"], capsys)
    assert code == 2 and "error: --set: policy 'esg': target_hit must be less than 1, got 2" in err
    code, _, err = run_cli(["up", "--port", "0", "--policy", "static", "--set", "esg.epsilon=1"], capsys)
    assert code == 2 and "policy 'esg' is not the gateway's (--policy static)" in err


def test_policies_lists_every_policy_and_its_ranges(capsys):
    code, out, _ = run_cli(["policies", "--json"], capsys)
    listed = json.loads(out)
    assert code == 0 and set(listed) == set(REG.names())
    assert listed["esg"]["target_hit"]["allowed"] == "in [0.5, 1)" and listed["batch1-wholegpu"] == {}
