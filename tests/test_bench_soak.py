"""`gpufaas bench soak`: its figures are computed as its docstring says, and a short run on a real gateway
reports every answer. (The benchmark's own figures are never asserted: it prints, it does not judge.)"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from gpufaas.gateway.cli.bench_soak import classify, recovery_s
from gpufaas.loadgen.driver import Record
from gpufaas.platform.clock import NS_PER_S
from gpufaas.platform.stats import quantile, quantile_upper_bound


def test_answers_are_sorted_into_the_hardening_issues_classes() -> None:
    assert classify("completed") == "result"
    assert {classify(k) for k in ("rejected", "timed_out", "failed")} == {"shed"}
    assert classify("http_429_queue") == "429" and classify("http_503_store_unavailable") == "5xx"
    assert {classify(k) for k in ("client_timeout", "connection_error", "http_400_bad_request", "unfinished")} == {"other"}


def test_the_p99_upper_bound_covers_the_true_p99_at_its_confidence() -> None:
    # uniform(0, 1) samples: the true p99 is 0.99; the bound must lie above it in >= ~97.5 % of draws
    rng = random.Random(7)
    trials, n = 1000, 1000
    covered = sum(quantile_upper_bound([rng.random() for _ in range(n)], 0.99) >= 0.99 for _ in range(trials))
    assert 0.96 <= covered / trials <= 0.995  # 97.5 % nominal; the order statistic makes it a little conservative
    # 300 values cannot reach 97.5 %: the maximum, which covers with 1 - 0.99^300 = 95.1 %
    covered = sum(quantile_upper_bound([rng.random() for _ in range(300)], 0.99) >= 0.99 for _ in range(trials))
    assert 0.93 <= covered / trials <= 0.97
    xs = [rng.random() for _ in range(n)]
    assert quantile_upper_bound(xs, 0.99) >= quantile(xs, 0.99)
    assert quantile_upper_bound([3.0, 1.0], 0.99) == 3.0  # too few values: the maximum
    with pytest.raises(ValueError):
        quantile_upper_bound([], 0.5)


def _rec(t_s: float, latency_ms: float, kind: str = "completed") -> Record:
    return Record(int(t_s * NS_PER_S), 0, 0, int(latency_ms * 1e6), kind, kind == "completed", None)


def test_recovery_is_the_first_idle_length_window_within_the_idle_bound() -> None:
    rng = random.Random(1)
    idle = [_rec(i / 50, 10 + rng.random()) for i in range(500)]  # 10 s at 50/s, 10-11 ms
    load = [_rec(10 + i / 500, 5000, "rejected") for i in range(5000)]  # 10 s of sheds
    # recovery: 3 s slow (200 ms), then back to 10-11 ms, for 20 s in all
    rec = [_rec(20 + i / 50, 200 if i < 150 else 10 + rng.random()) for i in range(1000)]
    got, bound = recovery_s(idle + load + rec, idle_s=10, load_end_s=20, end_s=40)
    assert bound is not None and 10 < bound <= 11
    assert got == 3.0  # the window starting 3 s after the load holds no slow answer
    # never back: no window fits once the recovery is shorter than the idle phase's length
    assert recovery_s(idle + load + rec[:400], idle_s=10, load_end_s=20, end_s=28)[0] is None
    # a shed in the recovery counts as infinitely late
    sheds = [_rec(20 + i / 50, 1, "rejected") if i % 40 == 0 else r for i, r in enumerate(rec)]
    assert recovery_s(idle + load + sheds, idle_s=10, load_end_s=20, end_s=40)[0] is None


@pytest.mark.slow
def test_a_short_soak_on_a_real_gateway_accounts_for_every_answer() -> None:
    out = subprocess.run([str(Path(sys.executable).parent / "gpufaas"), "bench", "soak", "--backend", "inproc", "--duration", "3",
                          "--load", "2", "--idle", "2", "--recovery", "3", "--sample", "1", "--calibrate", "1", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout)
    steps = doc["calibration"]["steps"]
    assert doc["capacity_rps"] == max(s["good_rps"] for s in steps) > 0
    assert sum(doc["answers"].values()) == doc["sent"] > 0 and doc["unfinished"] == 0
    assert sum(w["result"] + w["429"] + w["shed"] + w["5xx"] + w["other"] for w in doc["windows"]) == doc["sent"]
    assert {w["phase"] for w in doc["windows"]} == {"idle", "load", "recovery"}
    assert doc["samples"] and all(s["rss_mb"] > 0 and s["fds"] > 0 for s in doc["samples"])
    assert all(s["loop_lag_ms"] is not None and s["loop_lag_ms"] >= 0 for s in doc["samples"])
    assert doc["gateway_clean_exit"]
