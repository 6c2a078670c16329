"""Shared fixtures: paths and small builders for specs, clusters and controllers."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT / "loadgen" / "scenarios"
FUNCTIONS = ROOT / "functions"


@pytest.fixture
def root() -> Path:
    return ROOT


@pytest.fixture(scope="module")
def engine():
    """A Docker client with the base image present, for the docker tests; skips the module (with the
    reason) if no engine can be started."""
    from gpufaas.platform import images

    try:
        client = images.connect_engine(start=True)
    except images.EngineUnavailable as e:
        pytest.skip(f"no Docker engine can be started here: {e}")
    images.ensure_base_image(client)
    return client


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """chain.yaml cut to 1 s of arrivals and named 'tiny', with absolute paths so it can live in tmp_path."""
    import yaml

    data = yaml.safe_load((SCENARIOS / "chain.yaml").read_text())
    data.update(name="tiny", duration_s=1)
    for key in ("functions", "workflows"):
        data[key] = [str((SCENARIOS / p).resolve()) for p in data[key]]
    data["cluster"] = str((SCENARIOS / data["cluster"]).resolve())
    p = tmp_path / "tiny.yaml"
    p.write_text(yaml.safe_dump(data))
    return p
