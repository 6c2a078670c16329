"""`gpufaas sim --ray`: a sweep's cells as Ray tasks on a local two-node Ray cluster that the module starts
and stops (a head and a second node, one CPU each), with the same numbers as the local run; an address
where nothing answers is one line and exit 2."""

from __future__ import annotations

import json
import socket

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -e '.[dev]' installs it)")

from tests.helpers import run_cli  # noqa: E402
from tests.test_eval_seeds import tiny  # noqa: E402,F401  (the fixture)

pytestmark = pytest.mark.ray

WALL_FIELDS = ("sim_wall_s", "decision_us")  # wall-clock figures: they move with the machine, nothing else may


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    # NOTE: one CPU per node and 80 MB object stores: the test machine has two cores shared with other work
    c = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1, object_store_memory=80 * 2**20, include_dashboard=False))
    c.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    c.wait_for_nodes()
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def strip(results: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_FIELDS} for r in results]


@pytest.mark.slow
def test_ray_sweep_gives_the_local_numbers(cluster, tiny, capsys):  # noqa: F811
    argv = ["sim", "--scenario", str(tiny), "--policy", "esg,static", "--sweep", "load=0.5,2", "--seeds", "1,2", "--json"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    local = json.loads(out)
    code, out, err = run_cli([*argv, "--ray", cluster.address], capsys)
    assert code == 0, err
    remote = json.loads(out)
    assert strip(remote["results"]) == strip(local["results"])  # same cells, same order, same numbers
    assert len(remote["results"]) == 8
    assert not ray.is_initialized()  # the command disconnected what it connected


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("address, needle", [(None, "no Ray cluster answers at"), ("no-port-here", "is not an address")])
def test_unreachable_address_is_one_line_and_exit_2(tiny, capsys, address, needle):  # noqa: F811
    address = address or f"127.0.0.1:{free_port()}"
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", "--ray", address], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: --ray:") and err.count("\n") == 1 and needle in err


def test_ray_flag_without_address_means_auto(tiny, capsys, monkeypatch):  # noqa: F811
    from gpufaas.loadgen import results
    from gpufaas.platform.errors import UserError

    def connect(address: str) -> bool:
        raise UserError(f"--ray: asked for {address}")

    monkeypatch.setattr(results, "connect_ray", connect)
    code, out, err = run_cli(["sim", "--scenario", str(tiny), "--policy", "static", "--ray", "--json"], capsys)
    assert code == 2 and err == "error: --ray: asked for auto\n"
