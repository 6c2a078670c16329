"""Where the files that ship with gpufaas are: function bundles, workflows, scenarios, clusters.

They are package data (pyproject `package-data`), found through `importlib.resources`, so a clone,
an editable install and a wheel installed anywhere resolve them the same way. Who calls it: the
scenario loader (`gpufaas sim --scenario chain`), the gateway's default cluster, the docker backend's
bundle root, the demo and the benchmarks. It changes nothing.

NOTE: shipped scenarios name their functions and cluster by paths relative to the scenario file
(`../../functions/preprocess`, `clusters/a100x4.yaml`); the installed layout keeps the repository's
(`gpufaas/loadgen/scenarios/` beside `gpufaas/functions/`), so those paths hold in both.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from gpufaas.platform.errors import UserError


def _dir(package: str, *parts: str) -> Path:
    root = files(package)
    if not isinstance(root, Path):  # a zip or another non-file loader: bundles must be real files
        raise UserError(f"gpufaas is installed where its data files are not plain files ({root!r}); "
                        "install it into a directory (pip install gpufaas), not as a zip")
    return root.joinpath(*parts)


def functions_dir() -> Path:
    """The shipped function bundles, `workflows/` and `stack.yaml`."""
    return _dir("gpufaas.functions")


def scenarios_dir() -> Path:
    """The shipped scenarios (`chain.yaml`, ...)."""
    return _dir("gpufaas.loadgen", "scenarios")


def clusters_dir() -> Path:
    """The shipped cluster files (`a100x4.yaml`, ...)."""
    return _dir("gpufaas.loadgen", "scenarios", "clusters")


def package_root() -> Path:
    """The folder that holds `functions/`, `loadgen/`, ...: the repository root in a clone, the
    installed `gpufaas/` folder otherwise (relative trace paths are tried against it last)."""
    return functions_dir().parent
