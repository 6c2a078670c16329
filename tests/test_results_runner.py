"""`gpufaas results` (loadgen/results.py): target checks on hand-made results, the README block
replacement, the Pareto front, and one tiny real run (1 scenario x 2 policies x 1 load x 1 seed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpufaas.gateway.cli import main
from gpufaas.loadgen import report
from gpufaas.loadgen import results as R
from gpufaas.platform.errors import UserError

SCENARIOS = Path(__file__).resolve().parents[1] / "loadgen" / "scenarios"


def _r(policy: str, hit: float, alloc: float, busy: float = 0.1, p99_us: float = 100.0, load: float = 1.0,
       seed: int = 1, scenario: str = "s") -> dict:
    """One result dict in the shape of `gpufaas sim --json`'s results (the fields the runner reads)."""
    return {"scenario": scenario, "policy": policy, "load": load, "seed": seed, "slo_hit_rate": hit,
            "cost": {"allocated_usd": alloc, "busy_usd": busy}, "decision_us": {"p50": p99_us / 4, "p99": p99_us}}


def _checks(results: list[dict]) -> dict[tuple[str, float, str], dict]:
    return {(c["scenario"], c["load"], c["target"]): c for c in R.evaluate_targets(R.aggregate(results))}


def test_hit_target_uses_seed_means_and_reports_each_seed() -> None:
    rs = [_r("esg", 0.95, 0.2, seed=1), _r("esg", 0.93, 0.2, seed=2),      # mean 0.94
          _r("static", 0.94, 0.3, seed=1), _r("static", 0.96, 0.3, seed=2)]  # mean 0.95: 0.94 >= 0.95 - 0.01
    c = _checks(rs)[("s", 1.0, "i")]
    assert c["met"] is True
    assert "seed 1 MET" in c["detail"] and "seed 2 MISSED (0.930 vs best 0.960)" in c["detail"]
    rs[1] = _r("esg", 0.92, 0.2, seed=2)  # mean 0.935 < 0.94
    c = _checks(rs)[("s", 1.0, "i")]
    assert c["met"] is False and "static 0.950" in c["summary"]


@pytest.mark.parametrize("base_hit, base_cost, met", [
    (0.95, 0.2 / 1.06, False),   # as good and more than 5% cheaper
    (0.935, 0.2 / 1.06, False),  # within 0.02 below and cheaper
    (0.99, 0.1, False),          # better by more than 0.02 and cheaper: dominates esg
    (0.95, 0.2 / 1.04, True),    # cheaper, but by less than 5%
    (0.92, 0.05, True),          # much cheaper, but more than 0.02 worse
    (0.95, 0.25, True),          # costlier
])
def test_cost_target(base_hit: float, base_cost: float, met: bool) -> None:
    c = _checks([_r("esg", 0.95, 0.2), _r("infless", base_hit, base_cost)])[("s", 1.0, "ii")]
    assert c["met"] is met
    assert ("cheaper: infless" in c["summary"]) is (not met)


def test_alloc_over_busy_and_decision_time_are_checked_at_load_1_only() -> None:
    rs = [_r("esg", 0.9, 0.30, busy=0.1, p99_us=1000.0), _r("esg", 0.9, 0.30, busy=0.1, p99_us=400.0, seed=2),
          _r("esg", 0.9, 0.5, busy=0.1, p99_us=5000.0, load=2.0), _r("static", 0.9, 0.4, load=2.0)]
    c = _checks(rs)
    assert c[("s", 1.0, "iii")]["met"] is True and c[("s", 1.0, "iv")]["met"] is True
    assert ("s", 2.0, "iii") not in c and ("s", 2.0, "iv") not in c
    assert ("s", 2.0, "i") in c and ("s", 2.0, "ii") in c
    rs[0] = _r("esg", 0.9, 0.31, busy=0.1, p99_us=1001.0)  # 3.05x busy; one seed over 1 ms
    c = _checks(rs)
    assert c[("s", 1.0, "iii")]["met"] is False and c[("s", 1.0, "iv")]["met"] is False
    assert c[("s", 1.0, "iv")]["summary"].startswith("1001 us")


def test_no_target_policy_means_no_checks() -> None:
    assert R.evaluate_targets(R.aggregate([_r("static", 0.9, 0.1)])) == []


def test_aggregate_means_and_ranges() -> None:
    a = R.aggregate([_r("esg", 0.9, 0.2, busy=0.1, seed=1), _r("esg", 0.8, 0.4, busy=0.1, seed=2)])[("s", "esg", 1.0)]
    assert a["slo_hit_rate"]["mean"] == pytest.approx(0.85) and a["slo_hit_rate"]["by_seed"] == {1: 0.9, 2: 0.8}
    assert (a["allocated_usd"]["min"], a["allocated_usd"]["max"]) == (0.2, 0.4)
    assert a["alloc_over_busy"] == pytest.approx(3.0)


def test_replace_block_keeps_the_text_outside_the_markers() -> None:
    text = f"# T\nbefore\n{R.BEGIN}\nold\ntable\n{R.END}\nafter\n"
    out = R.replace_block(text, "new block\n")
    assert out == f"# T\nbefore\n{R.BEGIN}\nnew block\n{R.END}\nafter\n"
    assert R.replace_block(out, "new block") == out  # idempotent
    for bad in ("no markers", f"{R.END}\n{R.BEGIN}", f"{R.BEGIN}{R.BEGIN}{R.END}"):
        with pytest.raises(UserError, match="--readme"):
            R.replace_block(bad, "x")


def test_pareto_front() -> None:
    pts = [(1.0, 0.9), (2.0, 0.95), (2.0, 0.9), (0.5, 0.5), (3.0, 0.95)]
    assert report.pareto_front(pts) == [3, 0, 1]




def test_tiny_real_run_writes_readme_plot_json(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{R.BEGIN}\nstale\n{R.END}\noutro\n")
    plot, out = tmp_path / "docs" / "pareto.png", tmp_path / "raw.json"
    main(["results", "--scenarios", str(tiny), "--policies", "esg,static", "--loads", "1", "--seeds", "1", "-j", "1",
          "--readme", str(readme), "--plot", str(plot), "--json-out", str(out)])
    cap = capsys.readouterr()
    assert "[2/2]" in cap.err and "targets for esg" in cap.out
    text = readme.read_text()
    assert text.startswith(f"intro\n{R.BEGIN}\n### Measured") and text.endswith(f"{R.END}\noutro\n")
    assert "stale" not in text and "| esg | 1 |" in text and "| static | 1 |" in text and "(docs/pareto.png)" in text
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    raw = json.loads(out.read_text())
    assert [(r["scenario"], r["policy"], r["seed"]) for r in raw["results"]] == [("tiny", "esg", 1), ("tiny", "static", 1)]
    assert {c["target"] for c in raw["targets"]} == {"i", "ii", "iii", "iv"}


def test_same_figures_whatever_the_number_of_workers(tiny: Path) -> None:
    cells = [R.Cell(str(tiny), "esg", 1.0, 2), R.Cell(str(tiny), "static", 2.0, 3)]

    def strip(rs: list[dict]) -> list[dict]:
        return [{k: v for k, v in r.items() if k not in ("sim_wall_s", "decision_us")} for r in rs]

    assert strip(R.run_grid(cells, 1)) == strip(R.run_grid(cells, 2))


def test_bad_flags_fail_before_any_run(tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    for args, msg in ((["--policies", "nope"], "--policies: 'nope'"), (["--loads", "0"], "--loads: '0'"),
                      (["--scenarios", "nope"], "--scenarios: no scenario 'nope'"),
                      (["--readme", str(tmp_path / "missing.md")], "--readme: cannot read")):
        with pytest.raises(SystemExit) as e:
            main(["results", "--scenarios", str(tiny), "--plot", str(tmp_path / "p.png"), *args])
        assert e.value.code == 2
        assert msg in capsys.readouterr().err
