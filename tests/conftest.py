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
