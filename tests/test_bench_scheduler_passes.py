"""`gpufaas bench scheduler`'s controller_passes section: its structure on a tiny scenario (never timings)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from gpufaas.gateway.cli import bench_scheduler as B
from gpufaas.platform.errors import UserError

SCENARIOS = Path(__file__).resolve().parents[1] / "loadgen" / "scenarios"




def _check_policy_entry(e: dict) -> None:
    assert set(e) == {"passes", "decision_us", "invocations", "sim_wall_s", "invocations_per_s"}
    assert e["passes"] > 0 and e["invocations"] > 0
    assert set(e["decision_us"]) == {"p50", "p99", "max"}
    assert 0 <= e["decision_us"]["p50"] <= e["decision_us"]["p99"]
    assert e["invocations_per_s"] > 0


def test_controller_passes_structure(tiny: Path) -> None:
    out = B.controller_passes([str(tiny)], duration_s=None)
    assert out["load"] == 1.0 and out["duration_cap_s"] is None
    entry = out["scenarios"]["tiny"]
    assert entry["duration_s"] == 1
    assert set(entry["policies"]) == {"esg", "static"}
    for e in entry["policies"].values():
        _check_policy_entry(e)
    assert entry["esg_over_static_rate"] > 0
    assert "rate_target" not in entry  # stated on scale128 only


def test_rate_target_is_stated_on_scale128(tiny: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "RATE_TARGET_SCENARIO", "tiny")
    entry = B.controller_passes([str(tiny)], duration_s=0.5)["scenarios"]["tiny"]
    assert entry["duration_s"] == 0.5
    t = entry["rate_target"]
    assert t["esg_over_static_at_least"] == pytest.approx(1 / 3, abs=1e-4)
    assert t["met"] == (entry["esg_over_static_rate"] >= 1 / 3)


def test_unknown_scenario_is_a_user_error() -> None:
    with pytest.raises(UserError, match="--passes-scenarios: no scenario 'nope'"):
        B.resolve_scenario("nope")
    assert B.resolve_scenario("scale128") == SCENARIOS / "scale128.yaml"


def test_cli_json_has_the_section_and_no_passes_drops_it(tiny: Path) -> None:
    base = ["--cases", "7", "--skip-no-blades", "--json"]
    r = CliRunner().invoke(B.COMMAND, base + ["--passes-scenarios", str(tiny), "--passes-duration", "0"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert "optimality_gap" in out  # the random-case part is unchanged
    _check_policy_entry(out["controller_passes"]["scenarios"]["tiny"]["policies"]["esg"])
    r = CliRunner().invoke(B.COMMAND, base + ["--no-passes"])
    assert r.exit_code == 0, r.output
    assert "controller_passes" not in json.loads(r.output)
