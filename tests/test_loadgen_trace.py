"""Trace parsing, mapping and scaling on small fixtures; the real Azure sample where it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpufaas.loadgen.trace import TraceSpec, read_azure, read_timestamps, stable_hash
from gpufaas.loadgen.workload import WorkloadSpec, arrivals
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.errors import SpecError

FIX = Path(__file__).parent / "fixtures"
SMALL = str(FIX / "azure2019_small.csv")
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "azure_functions_2019_sample" / "fn500_min480-959" / "invocations.csv"


def spec(**kw) -> TraceSpec:
    d = {"format": "azure2019", "path": SMALL, "workflows": ["a", "b"]}
    d.update(kw)
    return TraceSpec(**d)


def test_read_azure_small():
    tr = read_azure(SMALL)
    assert tr.functions[0] == "o1/a1/f-busy" and tr.first_minute == 1
    assert tr.counts.tolist() == [[60, 120, 0], [30, 30, 30], [1, 0, 2], [0, 0, 0]]


def test_read_azure_fn200_style_header():
    tr = read_azure(FIX / "azure2019_fn200_style.csv")
    assert tr.counts.tolist() == [[5, 7], [0, 3]] and tr.first_minute == 1


@pytest.mark.parametrize("text, msg", [
    ("HashOwner,HashApp,Trigger,1,2\no,a,http,1,2\n", "no HashFunction column"),
    ("HashOwner,HashApp,HashFunction,Trigger\no,a,f,http\n", "no per-minute count columns"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,x\n", "row 2, column '2': count 'x'"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1,-3\n", "row 2, column '2'"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,2\no,a,f,http,1\n", "row 2: 5 columns"),
    ("HashOwner,HashApp,HashFunction,Trigger,1,3\no,a,f,http,1,2\n", "not consecutive"),
    ("", "empty file"),
])
def test_bad_azure_files_name_file_and_row(tmp_path, text, msg):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    with pytest.raises(SpecError, match=msg) as e:
        read_azure(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_trace_file_is_one_line_error(tmp_path):
    with pytest.raises(SpecError, match="not found"):
        spec(path="nope.csv").resolved(tmp_path, "sc.yaml: workload.traces[0]")


def test_busiest_mapping_ranks_by_total_and_round_robins():
    s = spec(top_n=3)
    # totals: f-busy 180, f-mid 90, f-low 3, f-zero 0 -> ranks 0,1,2 -> workflows a, b, a
    assert s.function_map() == {0: 0, 1: 1, 2: 0}
    assert s.minute_counts().tolist() == [[61, 120, 2], [30, 30, 30]]
    assert spec().function_map() == {0: 0, 1: 1}  # default top_n = one per workflow


def test_hash_mapping_covers_every_function_stably():
    s = spec(mapping="hash")
    m = s.function_map()
    names = read_azure(SMALL).functions
    assert m == {i: stable_hash(n) % 2 for i, n in enumerate(names)}
    assert s.minute_counts().sum() == 60 + 120 + 90 + 3


def test_uniform_spread_replays_exact_counts_inside_each_minute():
    s = spec(top_n=2, spread="uniform")
    out = list(s.arrivals(np.random.default_rng(1), 10**15, offset=5))
    ts = np.array([t for t, _ in out])
    assert (np.diff(ts) >= 0).all()
    minute = (ts // (60 * NS_PER_S)).tolist()
    wf = [w for _, w in out]
    assert sum(1 for m, w in zip(minute, wf) if m == 0 and w == 5) == 60
    assert sum(1 for m, w in zip(minute, wf) if m == 1 and w == 5) == 120
    assert sum(1 for m, w in zip(minute, wf) if m == 2 and w == 6) == 30
    assert sum(1 for m, w in zip(minute, wf) if m == 2 and w == 5) == 0


def test_time_and_rate_scaling():
    s = spec(top_n=2, spread="uniform", time_scale=6.0, rate_scale=0.5)
    out = list(s.arrivals(np.random.default_rng(2), 10**15, offset=0))
    ts = np.array([t for t, _ in out])
    assert ts.max() < 30 * NS_PER_S  # 3 trace minutes at 6x = 30 s
    per_minute = np.bincount(ts // (10 * NS_PER_S), minlength=3)
    assert per_minute.tolist() == [45, 75, 15]  # (60+30, 120+30, 0+30) / 2: exact halves
    rates = s.mean_rates_rps()
    assert rates == pytest.approx([180 / 2 / 30, 90 / 2 / 30])


def test_poisson_spread_mean_count():
    s = spec(top_n=1, spread="poisson", rate_scale=20.0)  # 60*20, 120*20, 0 per minute
    n = [sum(1 for _ in s.arrivals(np.random.default_rng(seed), 10**15, 0)) for seed in range(20)]
    assert np.mean(n) == pytest.approx(3600, rel=0.015)  # sd of the mean: 60 / sqrt(20) = 13
    assert np.std(n) == pytest.approx(60, rel=0.5)  # Poisson: variance = mean


def test_end_ns_and_start_minute_cut_the_replay():
    s = spec(top_n=1, spread="uniform", start_minute=1)
    out = list(s.arrivals(np.random.default_rng(4), 30 * NS_PER_S, 0))
    assert 30 < len(out) < 90 and max(t for t, _ in out) < 30 * NS_PER_S  # half of minute 2's 120


def test_timestamps_trace_sorted_relative_and_mapped():
    tr = read_timestamps(FIX / "timestamps_small.csv")
    assert tr.times_s.tolist() == [0, 0.5, 1.0, 1.5, 2.5]
    s = TraceSpec(format="timestamps", path=str(FIX / "timestamps_small.csv"), workflows=["wf-a", "wf-b"], time_scale=2.0)
    out = list(s.arrivals(np.random.default_rng(1), 10**15, 3))
    assert out == [(0, 3), (250_000_000, 3), (500_000_000, 4), (750_000_000, 3), (1_250_000_000, 4)]
    with pytest.raises(SpecError, match="'wf-b' in the file is not in"):
        TraceSpec(format="timestamps", path=str(FIX / "timestamps_small.csv"), workflows=["wf-a"]).row_targets()


@pytest.mark.parametrize("text, msg", [
    ("when\n1\n", "no time column"),
    ("t_s\n1\nabc\n", "row 3, column 't_s': 'abc' is not a time"),
    ("t_s,workflow\n1,\n", "row 2, column 'workflow': empty"),
])
def test_bad_timestamp_files(tmp_path, text, msg):
    p = tmp_path / "ts.csv"
    p.write_text(text)
    with pytest.raises(SpecError, match=msg):
        read_timestamps(p)


def test_timestamps_cannot_be_scaled_up():
    with pytest.raises(ValueError, match="only be thinned"):
        TraceSpec(format="timestamps", path="x.csv", workflows=["a"], rate_scale=2)


def test_workload_mixes_streams_and_traces_with_target_indices():
    wl = WorkloadSpec(streams=[{"workflow": "s", "rate_rps": 10}], traces=[spec(top_n=2, spread="uniform", time_scale=60)])
    assert [t.workflow for t in wl.targets()] == ["s", "a", "b"]
    out = list(arrivals(wl, 1, 3))
    assert [t for t, _ in out] == sorted(t for t, _ in out)
    counts = np.bincount([i for _, i in out], minlength=3)
    assert counts[1] == 60 + 120  # top_n=2: f-busy -> a, f-mid -> b
    assert counts[2] == 90 and 20 <= counts[0] <= 45
    assert wl.mean_rates_rps()["b"] == pytest.approx(90 / 3)


def test_scenario_resolves_trace_path_relative_to_its_file(tmp_path):
    from gpufaas.loadgen.scenario import load_scenario

    (tmp_path / "t.csv").write_text((FIX / "azure2019_small.csv").read_text())
    fn = ROOT / "functions"
    text = f"""
name: tr
duration_s: 10
cluster: {ROOT}/loadgen/scenarios/clusters/a100x4.yaml
functions: [{fn}/preprocess, {fn}/resnet50]
workflows: [{fn}/workflows/image-classify.yaml]
workload:
  traces: [{{format: azure2019, path: t.csv, workflows: [image-classify], time_scale: 6}}]
"""
    (tmp_path / "sc.yaml").write_text(text)
    sc = load_scenario(tmp_path / "sc.yaml")
    assert Path(sc.workload.traces[0].path) == (tmp_path / "t.csv").resolve()
    (tmp_path / "sc2.yaml").write_text(text.replace("t.csv", "missing.csv"))
    with pytest.raises(SpecError, match=r"sc2.yaml: workload.traces\[0\].path: trace file 'missing.csv' not found"):
        load_scenario(tmp_path / "sc2.yaml")
    (tmp_path / "sc3.yaml").write_text(text.replace("workflows: [image-classify]", "workflows: [nope]"))
    with pytest.raises(SpecError, match="unknown workflow 'nope'"):
        load_scenario(tmp_path / "sc3.yaml")


@pytest.mark.skipif(not SAMPLE.is_file(), reason="the Azure 2019 sample is not beside the repository (../shared/data)")
def test_real_azure_sample_scenarios_load_and_simulate_briefly():
    from gpufaas.loadgen.scenario import load_scenario
    from gpufaas.loadgen.simdriver import run_scenario

    tr = read_azure(SAMPLE)
    assert tr.counts.shape == (500, 480) and tr.first_minute == 480
    assert int(tr.counts.sum()) == 3_037_902  # the README's 3.04 M invocations
    for name in ("azure-hash", "azure-busiest"):
        sc = load_scenario(ROOT / "loadgen" / "scenarios" / f"{name}.yaml")
        sc = sc.model_copy(update={"duration_s": 5.0, "drain_s": 5.0})
        r = run_scenario(sc, "batch1-wholegpu")
        expected = sum(sc.workload.mean_rates_rps(1.0, 5.0).values()) * 5
        assert r["invocations"] == pytest.approx(expected, rel=0.35)
        assert set(r["per_workflow"]) <= {"image-classify", "text-pipeline", "video-analytics"}
