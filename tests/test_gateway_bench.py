"""`gpufaas bench gateway`: a very short run has the documented JSON shape and every gateway request completed."""

from __future__ import annotations

import pytest

from gpufaas.gateway.cli.bench_gateway import measure


@pytest.mark.slow
def test_bench_gateway_short_run_shape():
    r = measure(duration_s=0.3, concurrency=4, rounds=2, latency_n=20, warmup_s=0.2)
    for k in ("gateway_rps", "bare_rps", "ratio", "added_latency_ms_p50"):
        assert isinstance(r[k], float), (k, r)
    assert r["gateway_rps"] > 0 and r["bare_rps"] > 0 and r["ratio"] > 0
    assert len(r["round_ratios"]) == 2 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    assert r["gateway_rejected"] == 0 and r["gateway_completed"] > 0
