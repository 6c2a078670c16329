"""`gpufaas profile`: measures a bundle on the local CPU and writes a profile that loads; bad input exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gpufaas.platform.profiles import Profiles
from tests.conftest import FUNCTIONS, ROOT

pytestmark = pytest.mark.live  # starts processes (gateway, workers, HTTP servers): not in `make test-fast`


def gpufaas(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from gpufaas.gateway.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=180)


def test_profile_writes_a_loadable_profile(tmp_path: Path) -> None:
    out = tmp_path / "p.yaml"
    r = gpufaas("profile", str(FUNCTIONS / "resnet50"), "--small", "--batches", "1,4", "--shares", "0.5,1", "--repeats", "2", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "measured share 1.0 only" in r.stderr  # CPU: shares do not apply, and it says so
    profiles = Profiles()
    p = profiles.add_file(out)
    assert p.model == "resnet50" and p.gpu_type == "cpu" and p.batches == [1, 4] and p.shares == [1.0]
    t = profiles.table("resnet50", "cpu")
    assert t.latency_ms(1, 1.0) > 0 and t.latency_ms(4, 1.0) >= t.latency_ms(1, 1.0)
    assert p.cold_start.runtime_init_ms > 0 and p.memory.instance_mb > 0


@pytest.mark.parametrize("args, message", [
    (["profile", "functions/no-such-function"], "no function.yaml"),
    (["profile", "functions/aggregator", "--batches", "1,x"], "--batches: '1,x' is not a comma-separated list"),
    (["profile", "functions/aggregator", "--shares", "0,1"], "--shares: shares must lie in (0, 1]"),
])
def test_profile_bad_input(args: list[str], message: str) -> None:
    r = gpufaas(*args)
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
