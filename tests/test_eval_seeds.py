"""`gpufaas sim --seeds` (mean and 95 % Student-t interval per cell) and the `meta` every JSON result carries."""

from __future__ import annotations

import hashlib
import json
import math
import platform as std_platform
import subprocess

import pytest

from gpufaas.loadgen import results as R
from tests.conftest import ROOT
from tests.helpers import run_cli, tiny_scenario


@pytest.fixture
def tiny(tmp_path):
    """The chain's image-classify workflow, 3 s at 40 rps: a few policies x loads x seeds in seconds."""
    return tiny_scenario(tmp_path, "{workflow: image-classify, arrival: gamma, rate_rps: 40, cv: 2}")




def t_quantile(df: int, p: float = 0.975) -> float:
    """Student's t quantile by integrating its density (Simpson's rule) and bisection: an independent check
    of the table in results.T975."""
    c = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)

    def cdf(x: float, n: int = 4000) -> float:
        h = x / n
        f = [c * (1 + (i * h) ** 2 / df) ** (-(df + 1) / 2) for i in range(n + 1)]
        return 0.5 + h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))

    lo, hi = 0.0, 20.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


@pytest.mark.parametrize("df", [1, 2, 3, 4, 5, 9, 10, 19, 29, 30, 40, 60, 120])
def test_t_table_matches_the_t_distribution(df):
    assert R.t975(df) == pytest.approx(t_quantile(df), abs=2e-3)


def test_t_between_tabulated_df_is_conservative_and_large_df_is_normal():
    assert R.t975(45) == R.T975[40] >= t_quantile(45)
    assert R.t975(1000) == R.Z975
    with pytest.raises(ValueError):
        R.t975(0)


def test_mean_ci95():
    s = R.mean_ci95([1.0, 2.0, 3.0])
    assert s["mean"] == 2.0 and s["sd"] == pytest.approx(1.0) and s["n"] == 3
    assert s["half_width"] == pytest.approx(R.T975[2] / math.sqrt(3))
    assert s["ci95"] == pytest.approx([2.0 - s["half_width"], 2.0 + s["half_width"]])
    one = R.mean_ci95([0.5])
    assert one["mean"] == 0.5 and one["ci95"] is None and one["half_width"] is None
    assert R.mean_ci95([0.9, 0.9])["half_width"] == 0.0


def test_seeds_run_every_cell_at_each_seed_and_summarize(tiny, capsys):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static,fastgshare", "--sweep", "load=0.5,2",
                          "--seeds", "1,2,3", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    cells = [(r["policy"], r["load"], r["seed"]) for r in doc["results"]]
    assert sorted(cells) == sorted((p, ld, s) for p in ("static", "fastgshare") for ld in (0.5, 2.0) for s in (1, 2, 3))
    assert len(doc["summary"]) == 4
    for s in doc["summary"]:
        rs = [r for r in doc["results"] if (r["policy"], r["load"]) == (s["policy"], s["load"])]
        assert s["seeds"] == [r["seed"] for r in rs]
        hits = [r["slo_hit_rate"] for r in rs]
        assert s["slo_hit_rate"] == R.mean_ci95(hits)
        assert s["slo_hit_rate"]["ci95"][0] <= sum(hits) / 3 <= s["slo_hit_rate"]["ci95"][1]
        assert s["invocations"]["mean"] == pytest.approx(sum(r["invocations"] for r in rs) / 3)
    # the seeds differ (else the interval says nothing) and a cell at seed 2 is what --seed 2 gives
    assert len({r["invocations"] for r in doc["results"] if r["policy"] == "static" and r["load"] == 2.0}) > 1
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", "--sweep", "load=2", "--seed", "2", "--json"], capsys)
    one = json.loads(out)["results"][0]
    got = next(r for r in doc["results"] if (r["policy"], r["load"], r["seed"]) == ("static", 2.0, 2))
    assert {k: v for k, v in one.items() if k not in ("sim_wall_s", "decision_us")} == \
           {k: v for k, v in got.items() if k not in ("sim_wall_s", "decision_us")}


def test_seeds_table_shows_mean_and_interval(tiny, capsys):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", "--seeds", "1,2"], capsys)
    assert code == 0, err
    assert "95 % interval" in out and "±" in out


@pytest.mark.parametrize("argv, needle", [(["--seeds", "1,x"], "'x' is not an integer"), (["--seeds", "1,1"], "twice"),
                                          (["--seeds", "1,2", "--seed", "4"], "not both"), (["--seeds", ""], "is not an integer")])
def test_bad_seeds_exit_2_before_running(tiny, capsys, argv, needle):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", *argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --seeds:") and err.count("\n") == 1 and needle in err


def test_sim_json_carries_meta(tiny, capsys):
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "esg,static", "--set", "esg.epsilon=0", "--json"], capsys)
    assert code == 0, err
    meta = json.loads(out)["meta"]
    assert meta["scenario_sha256"] == hashlib.sha256(tiny.read_bytes()).hexdigest()
    assert meta["seed"] == 3  # the scenario's
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert meta["git"] == head and len(head) == 40
    assert meta["python"] == std_platform.python_version()
    from importlib.metadata import version

    assert meta["version"] == version("gpufaas") and meta["torch"] == version("torch")
    assert meta["params"]["esg"]["epsilon"] == 0  # --set over the default
    assert set(meta["params"]) == {"esg", "static"}


def test_git_revision_is_none_outside_a_checkout(tmp_path):
    assert R.git_revision(tmp_path) is None
    assert R.git_revision(tmp_path / ".venv" / "lib" / "site-packages" / "gpufaas") is None


def test_results_json_carries_meta(tiny, tmp_path, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_cli(["results", "--scenarios", str(tiny), "--policies", "static", "--loads", "1", "--seeds", "1,2",
                          "--duration", "2", "-j", "1", "--no-readme", "--plot", str(tmp_path / "p.png"), "--json-out", str(out_json)], capsys)
    assert code == 0, err
    meta = json.loads(out_json.read_text())["meta"]
    assert meta["scenario_sha256"] == {"tiny": hashlib.sha256(tiny.read_bytes()).hexdigest()}
    assert meta["seed"] == [1, 2]
    assert "static" in meta["params"]["tiny"]
    assert {"version", "git", "python", "torch"} <= set(meta)
