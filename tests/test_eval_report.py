"""`gpufaas sim --plot` (hit and cost against load beside the Pareto panel, plain load ticks) and `--report`
(one self-contained HTML page: table, inline plot, metadata)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from gpufaas.loadgen import report
from tests.helpers import run_cli
from tests.test_eval_seeds import tiny  # noqa: F401  (the fixture)


def test_load_axis_ticks_are_plain_numbers():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0.5, 1, 2, 4], [1, 2, 3, 4])
    report.plain_load_axis(ax, [0.5, 1, 2, 4])
    fig.canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.5", "1", "2", "4"]
    assert ax.get_xscale() == "log"
    plt.close(fig)


def test_plot_has_the_pareto_panel_with_its_front(monkeypatch, tmp_path):
    """Three panels; the third plots hit against allocated cost and rings exactly the undominated points."""
    import matplotlib.pyplot as plt

    rs = [{"scenario": "s", "policy": p, "load": ld, "seed": 1, "slo_hit_rate": h, "cost": {"allocated_usd": c, "busy_usd": c / 2},
           "latency_ms": {"p50": 1.0, "p99": 2.0}, "cold_starts": 0, "invocations": 10}
          for p, ld, h, c in [("a", 1.0, 0.9, 1.0), ("b", 1.0, 0.95, 2.0), ("c", 1.0, 0.8, 3.0), ("a", 2.0, 0.5, 1.5)]]
    seen = {}
    monkeypatch.setattr(plt.Figure, "savefig", lambda self, *a, **k: seen.setdefault("fig", self))
    report.write_plot(tmp_path / "x.png", "s", rs)
    axes = seen["fig"].axes
    assert len(axes) == 3 and "trade-off" in axes[2].get_title()
    rings = [c for c in axes[2].collections if c.get_sizes().size and c.get_sizes()[0] == 130]
    assert sorted(map(tuple, rings[0].get_offsets().tolist())) == [(1.0, 0.9), (2.0, 0.95)]  # c and a@2 are dominated


def test_report_is_one_self_contained_page(tiny, tmp_path, capsys):  # noqa: F811
    page = tmp_path / "r.html"
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static,fastgshare", "--sweep", "load=0.5,2",
                          "--seeds", "1,2", "--report", str(page), "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    html = page.read_text()
    m = re.search(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert m and base64.b64decode(m.group(1))[:8] == b"\x89PNG\r\n\x1a\n"
    # nothing fetched from elsewhere: no other src/href, no external stylesheet or script
    assert len(re.findall(r'\b(?:src|href)=', html)) == 1 and "<script" not in html and "<link" not in html
    rows = re.findall(r"<tr><td>(\w+)</td><td>([\d.]+)</td>", html)
    assert sorted(rows) == sorted((s["policy"], f"{s['load']:g}") for s in doc["summary"])
    hit = doc["summary"][0]["slo_hit_rate"]
    assert f"{hit['mean']:.3f} ± {hit['half_width']:.3f}" in html
    assert doc["meta"]["git"] in html and doc["meta"]["scenario_sha256"] in html


@pytest.mark.parametrize("target", ["nodir/x.html", "."])
def test_unwritable_report_exits_2_before_running(tiny, tmp_path, capsys, target):  # noqa: F811
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", "--report", str(tmp_path / target)], capsys)
    assert code == 2 and out == "" and "--report" in err  # a directory: click's own check says so
    if target != ".":
        assert err.startswith("error: --report:") and err.count("\n") == 1
