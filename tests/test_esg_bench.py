"""`gpufaas bench scheduler`: its figures' shape, the exact search's zero gap, and flag errors."""

from __future__ import annotations

import json

import pytest

from gpufaas.gateway.cli import main
from gpufaas.gateway.cli.bench_scheduler import run_bench


def test_small_run_reports_every_figure_and_epsilon_zero_is_exact():
    r = run_bench(cases=7, epsilon=0.0, seed=3, no_blades=True, no_blade_max_expansions=1000)
    assert r["cases"] == 7 and r["optimality_gap"]["max"] == 0.0
    assert set(r["decision_us_by_stages"]) == {str(n) for n in range(2, 9)}
    assert 0 < r["pruned_fraction"] < 1
    nb = r["without_blades"]
    assert nb["pruned_fraction"] == 0.0 and nb["nodes_expanded"]["p99"] >= r["nodes_expanded"]["p99"]


def test_cli_prints_one_json_object(capsys):
    main(["bench", "scheduler", "--cases", "7", "--epsilon", "0.1", "--skip-no-blades", "--no-passes", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["epsilon"] == 0.1 and out["optimality_gap"]["max"] <= 0.1


def test_bad_epsilon_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "scheduler", "--epsilon", "-1"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --epsilon: must be a finite number >= 0, got -1.0"
