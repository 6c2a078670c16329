"""A scenario's own profiles folder, and `--profiles DIR` on `gpufaas sim`, `gpufaas up` and `gpufaas profile`.

User folders are searched before the shipped profiles (platform/profile_tables/), so a scenario can run on a GPU
type that ships no profile; a missing profile says where it looked and what to do; a profile file that
fails validation is named. The fixture folder tests/fixtures/profiles-v100/ holds a made-up "V100-32GB"
(synthetic: the shipped A100 tables scaled by 2.0, checked below) and tests/fixtures/v100x4.yaml uses it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpufaas.loadgen.scenario import load_scenario
from gpufaas.loadgen.simdriver import build_controller, build_policy, run_scenario, scenario_profiles
from gpufaas.platform.clock import VirtualClock
from gpufaas.platform.errors import ProfileError, SpecError
from gpufaas.platform.profiles import SHIPPED_DIR, Profile, Profiles
from tests.conftest import FUNCTIONS, ROOT
from tests.helpers import AUTH, TEST_ADMIN_KEY

FIXTURES = ROOT / "tests" / "fixtures"
V100_DIR = FIXTURES / "profiles-v100"
V100_SCENARIO = FIXTURES / "v100x4.yaml"
V100_SHARES = [0.2, 0.4, 0.5, 0.6, 0.8, 1.0]
SCALE = 2.0  # the fixture's V100 latency = SCALE x the shipped A100 table at the same (batch, share)
GPUFAAS = [str(Path(sys.executable).parent / "gpufaas")]


def gpufaas(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(GPUFAAS + list(args), cwd=cwd, capture_output=True, text=True, timeout=300)


def profile_doc(model: str = "resnet50", gpu_type: str = "V100-32GB", ms: float = 1.0, **kw) -> dict:
    """A small valid profile document with a flat latency `ms` (for precedence tests)."""
    doc = {"model": model, "gpu_type": gpu_type, "source": "synthetic test fixture", "batches": [1, 32],
           "shares": [0.1, 1.0], "latency_ms": [[ms, ms], [ms, ms]],
           "memory": {"instance_mb": 100, "per_item_mb": 1},
           "cold_start": {"container_ms": 1, "runtime_init_ms": 1, "model_load_ms": 1}}
    doc.update(kw)
    return doc


def write_profile(folder: Path, name: str, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    p = folder / name
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    return p


def v100_scenario_without_profiles(tmp_path: Path) -> Path:
    """The fixture scenario, copied elsewhere without its `profiles:` key (other paths made absolute)."""
    text = V100_SCENARIO.read_text().replace("profiles: profiles-v100\n", "")
    text = text.replace("../../functions", str(FUNCTIONS))
    p = tmp_path / "v100-bare.yaml"
    p.write_text(text)
    return p


# ---------------------------------------------------------------- the fixture itself


@pytest.mark.parametrize("model", ["preprocess", "resnet50"])
def test_the_v100_fixture_is_the_a100_table_scaled_and_says_so(model):
    doc = yaml.safe_load((V100_DIR / f"{model}.V100-32GB.yaml").read_text())
    p = Profile.model_validate(doc)
    assert p.gpu_type == "V100-32GB" and p.shares == V100_SHARES
    assert "synthetic test fixture" in p.source and "scaling the shipped A100" in p.source and "not a measurement" in p.source
    a100 = Profiles.shipped().table(model, "A100-80GB")
    for i, b in enumerate(p.batches):
        for j, s in enumerate(p.shares):
            assert p.latency_ms[i][j] == pytest.approx(SCALE * a100.latency_ms(b, s), abs=0.0006), (b, s)


# ---------------------------------------------------------------- Profiles.with_dirs


def test_user_folders_are_searched_first_and_replace_shipped_profiles(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    write_profile(first, "resnet50.A100-80GB.yaml", profile_doc(gpu_type="A100-80GB", ms=111.0))
    write_profile(second, "resnet50.A100-80GB.yaml", profile_doc(gpu_type="A100-80GB", ms=222.0))
    write_profile(second, "bert.V100-32GB.yaml", profile_doc(model="bert", ms=3.0))

    shipped = Profiles.shipped()
    assert shipped.searched == (str(SHIPPED_DIR),)
    p = Profiles.with_dirs([first, second])
    assert p.searched == (str(first.resolve()), str(second.resolve()), str(SHIPPED_DIR))
    assert p.table("resnet50", "A100-80GB").latency_ms(1, 1.0) == 111.0  # the first folder wins
    assert Profiles.with_dirs([second, first]).table("resnet50", "A100-80GB").latency_ms(1, 1.0) == 222.0
    assert p.table("bert", "V100-32GB").latency_ms(1, 1.0) == 3.0  # the second folder still adds its own
    assert p.table("vit_b16", "A100-80GB") is shipped.table("vit_b16", "A100-80GB")  # shipped ones stay
    assert shipped.table("resnet50", "A100-80GB").latency_ms(1, 1.0) != 111.0  # the shipped store is untouched


def test_a_missing_profile_says_where_it_looked_in_order_and_what_to_do(tmp_path):
    empty = tmp_path / "mine"
    empty.mkdir()
    with pytest.raises(ProfileError) as e:
        Profiles.with_dirs([empty]).table("resnet50", "V100-32GB")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("no profile for model 'resnet50' on GPU type 'V100-32GB'; ")
    assert f"searched, in order: {empty.resolve()}, {SHIPPED_DIR} (shipped);" in msg
    assert "add a file resnet50.V100-32GB.yaml" in msg and "--profiles DIR" in msg and "profiles:" in msg


def test_a_profile_file_that_fails_validation_is_named(tmp_path):
    bad = write_profile(tmp_path / "p", "resnet50.V100-32GB.yaml", profile_doc(latency_ms=[[1.0, 1.0]]))
    with pytest.raises(ProfileError) as e:
        Profiles.with_dirs([tmp_path / "p"])
    msg = str(e.value)
    assert msg.startswith(f"{bad}: ") and "latency_ms: has 1 rows, expected one per batch size (2)" in msg and "\n" not in msg
    (tmp_path / "p" / "resnet50.V100-32GB.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ProfileError, match=rf"^{bad}: YAML syntax error"):
        Profiles.with_dirs([tmp_path / "p"])
    with pytest.raises(ProfileError, match=r"resnet50.V100-32GB.yaml: YAML syntax error"):
        Profiles().add_file(bad)


def test_a_missing_folder_and_two_files_for_one_profile_are_errors(tmp_path):
    with pytest.raises(ProfileError, match=r"profiles folder .*nope: not found"):
        Profiles.with_dirs([tmp_path / "nope"])
    write_profile(tmp_path / "d", "a.yaml", profile_doc())
    write_profile(tmp_path / "d", "b.yaml", profile_doc(ms=2.0))
    with pytest.raises(ProfileError, match=r"b\.yaml: profile resnet50@V100-32GB is also in a\.yaml in the same folder"):
        Profiles.with_dirs([tmp_path / "d"])


def test_an_edited_profile_file_is_reloaded(tmp_path):
    write_profile(tmp_path / "d", "r.yaml", profile_doc(ms=1.0))
    assert Profiles.with_dirs([tmp_path / "d"]).table("resnet50", "V100-32GB").latency_ms(1, 1.0) == 1.0
    write_profile(tmp_path / "d", "r.yaml", profile_doc(ms=22.0))
    assert Profiles.with_dirs([tmp_path / "d"]).table("resnet50", "V100-32GB").latency_ms(1, 1.0) == 22.0


# ---------------------------------------------------------------- scenarios and the simulator


def test_a_scenarios_profiles_folder_resolves_against_the_file_and_drives_the_sim():
    sc = load_scenario(V100_SCENARIO)
    assert sc.profiles == str(V100_DIR.resolve())
    assert [f.shares for f in sc.functions] == [V100_SHARES, V100_SHARES]
    clock = VirtualClock()
    ctl = build_controller(sc, build_policy(sc, "fastgshare"), clock)
    assert ctl.profiles.searched[0] == str(V100_DIR.resolve())
    t = ctl.functions["resnet50"].tables["V100-32GB"]
    assert t.latency_ms(1, 1.0) == pytest.approx(SCALE * Profiles.shipped().table("resnet50", "A100-80GB").latency_ms(1, 1.0), abs=6e-4)
    r = run_scenario(sc.model_copy(update={"duration_s": 5.0}), "fastgshare", check_invariants=True)
    assert r["invocations"] > 0 and r["completed"] > 0 and r["refused_decisions"] == 0


def test_a_missing_scenario_profiles_folder_fails_at_load(tmp_path):
    text = V100_SCENARIO.read_text().replace("profiles: profiles-v100", "profiles: no-such-folder")
    (tmp_path / "s.yaml").write_text(text.replace("../../functions", str(FUNCTIONS)))
    with pytest.raises(SpecError, match=r"s\.yaml: profiles: folder 'no-such-folder' not found \(looked for .*no-such-folder\); fix the path"):
        load_scenario(tmp_path / "s.yaml")


def test_flags_come_before_the_scenarios_folder(tmp_path):
    write_profile(tmp_path / "flag", "r.yaml", profile_doc(ms=77.0))
    sc = load_scenario(V100_SCENARIO)
    p = scenario_profiles(sc, [tmp_path / "flag"])
    assert p.searched == (str((tmp_path / "flag").resolve()), str(V100_DIR.resolve()), str(SHIPPED_DIR))
    assert p.table("resnet50", "V100-32GB").latency_ms(1, 1.0) == 77.0
    assert p.table("preprocess", "V100-32GB").latency_ms(1, 1.0) == 1.042  # from the scenario's folder


# ---------------------------------------------------------------- the CLI


def test_gpufaas_sim_runs_the_v100_scenario():
    r = gpufaas("sim", "--scenario", "tests/fixtures/v100x4.yaml", "--policy", "fastgshare", "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)["results"][0]
    assert res["policy"] == "fastgshare" and res["invocations"] > 1000 and res["completed"] > 0
    assert res["warmup_s"] == 2.0 and res["cost"]["allocated_usd"] > 0


@pytest.mark.slow  # runs `gpufaas` in a subprocess: `make test`, not `make test-fast`
def test_gpufaas_sim_without_the_folder_names_the_searched_folders_and_profiles_flag_fixes_it(tmp_path):
    bare = v100_scenario_without_profiles(tmp_path)
    r = gpufaas("sim", "--scenario", str(bare), "--policy", "fastgshare", "--json")
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: no profile for model 'preprocess' on GPU type 'V100-32GB'; ")
    assert f"searched, in order: {SHIPPED_DIR} (shipped);" in lines[0] and "--profiles DIR" in lines[0]

    r = gpufaas("sim", "--scenario", str(bare), "--policy", "fastgshare", "--profiles", str(V100_DIR), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["results"][0]["completed"] > 0


@pytest.mark.slow  # runs `gpufaas` in a subprocess: `make test`, not `make test-fast`
def test_bad_profiles_flags_are_usage_errors(tmp_path):
    r = gpufaas("sim", "--scenario", str(V100_SCENARIO), "--profiles", str(tmp_path / "nope"))
    assert r.returncode == 2 and "Invalid value for '--profiles'" in r.stderr and "does not exist" in r.stderr
    r = gpufaas("up", "--profiles", str(tmp_path / "nope"))
    assert r.returncode == 2 and "Invalid value for '--profiles'" in r.stderr
    bad = write_profile(tmp_path / "broken", "x.yaml", profile_doc(shares=[1.0, 0.5]))
    r = gpufaas("up", "--port", "0", "--data-dir", str(tmp_path / "gw"), "--profiles", str(tmp_path / "broken"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(f"error: {bad}: ")
    assert lines[0].endswith("shares: must be increasing fractions in (0, 1]")
    r = gpufaas("profile", str(FUNCTIONS / "preprocess"), "-o", str(tmp_path / "p.yaml"), "--profiles", str(tmp_path))
    assert r.returncode == 2 and "-o/--output and --profiles both say where to write" in r.stderr


@pytest.mark.slow  # runs `gpufaas` in a subprocess: `make test`, not `make test-fast`
def test_gpufaas_profile_writes_into_the_folder_that_sim_reads(tmp_path):
    folder = tmp_path / "my-profiles"
    r = gpufaas("profile", str(FUNCTIONS / "preprocess"), "--small", "--batches", "1,2", "--repeats", "1",
                "--gpu-type", "test-cpu", "--profiles", str(folder))
    assert r.returncode == 0, r.stderr
    written = folder / "preprocess.test-cpu.yaml"
    assert written.is_file() and f"wrote {written}" in r.stdout and f"--profiles {folder}" in r.stdout
    p = Profiles.with_dirs([folder])
    assert p.searched[0] == str(folder.resolve()) and p.table("preprocess", "test-cpu").latency_ms(2, 1.0) > 0


# ---------------------------------------------------------------- the gateway


async def test_the_gateway_deploys_on_a_gpu_type_from_a_profiles_folder(aiohttp_client, tmp_path):
    from gpufaas.gateway.app import create_app
    from gpufaas.gateway.config import GatewayConfig

    cluster = tmp_path / "v100.yaml"
    cluster.write_text(yaml.safe_dump(yaml.safe_load(V100_SCENARIO.read_text())["cluster"]))
    spec = {**yaml.safe_load((FUNCTIONS / "preprocess" / "function.yaml").read_text()), "shares": V100_SHARES}

    def cfg(name: str) -> GatewayConfig:
        return GatewayConfig(backend="inproc", cold_start_scale=0.0, data_dir=tmp_path / name, cluster_file=cluster, admin_key=TEST_ADMIN_KEY)

    bare = await aiohttp_client(create_app(cfg("bare")), headers=AUTH)
    r = await bare.post("/v1/functions", json={"spec": spec, "files": {"handler.py": "# test\n"}})
    assert r.status == 422
    msg = (await r.json())["error"]["message"]
    assert "no profile for model 'preprocess' on GPU type 'V100-32GB'" in msg and f"{SHIPPED_DIR} (shipped)" in msg

    c = await aiohttp_client(create_app(cfg("with"), profiles_dirs=(V100_DIR,)), headers=AUTH)
    r = await c.post("/v1/functions", json={"spec": spec, "files": {"handler.py": "# test\n"}})
    assert r.status == 201, await r.text()
