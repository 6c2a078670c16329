"""Every input checked (issue 15, item 3): hostile requests against a real gateway (inproc backend) each get a
JSON 4xx naming the field, never a 5xx, and nothing they carry is deployed, written or restored after a
restart; the limits hold at their edges; hypothesis fuzzing of the tensor decoders (`platform/wire.py`,
`gateway.api.decode_tensor`) and of the manifest loader (`specs.parse`) lets only the project's own error
types out (WireError, BadInput, SpecError)."""

from __future__ import annotations

import json
import math
import string
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpufaas.gateway.api import BadInput, decode_tensor, parse_slo_ms
from gpufaas.gateway.app import create_app
from gpufaas.gateway.http_io import ApiError, PLATFORM
from gpufaas.gateway.routes.functions import bundle_files
from gpufaas.platform import wire
from gpufaas.platform.errors import SpecError
from gpufaas.platform.specs import (MAX_AFTER, MAX_BUNDLE_BYTES, MAX_BUNDLE_FILE_BYTES, MAX_BUNDLE_FILES, MAX_NAME_LEN, MAX_STAGES, MAX_TENSOR_DIMS,
                                    NAME_RE, FunctionSpec, WorkflowSpec, parse)
from gpufaas.platform.units import INT64_MAX_NS, MAX_DURATION_MS, MAX_DURATION_S, ms_to_ns, s_to_ns
from tests.helpers import AUTH, wire_body
from tests.test_gateway_api import expect_error, make_cfg

FN = {"name": "f1", "model": "preprocess", "shares": [1.0], "batch_sizes": [1]}
WF = {"name": "w", "slo_ms": 1000, "stages": [{"name": "s", "function": "f1"}]}
MSGPACK = {"Content-Type": "application/msgpack"}
JSON_CT = {"Content-Type": "application/json"}
YAML_CT = {"Content-Type": "application/yaml"}


def fn(**kw: Any) -> dict:
    return {**FN, "name": "evil", **kw}


def bundle(files: dict, **kw: Any) -> dict:
    return {"spec": fn(**kw), "files": files}


def wf(**kw: Any) -> dict:
    return {**WF, "name": "evil", **kw}


def chain(n: int) -> list[dict]:
    return [{"name": f"s{i}", "function": "f1", "after": [f"s{i - 1}"] if i else []} for i in range(n)]


def tensor(dtype: Any = "float32", shape: Any = (1,), data: Any = b"\0\0\0\0", **extra: Any) -> bytes:
    """A msgpack invoke body with one tensor map `x`."""
    return msgpack.packb({"data": {"x": {"dtype": dtype, "shape": list(shape) if isinstance(shape, tuple) else shape, "data": data, **extra}}},
                         use_bin_type=True)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# (id, method, path, request kwargs, status, error code, what the message must name). Deploys use the name
# "evil" (or an invalid one): after each, GET shows that nothing but f1 and w is deployed.
HOSTILE = [
    # ---- functions: numbers that become integer ns, names, handler, tensors, bundle files, bodies
    ("keep-alive-1e300", "post", "/v1/functions", {"json": fn(keep_alive_s=1e300)}, 422, "invalid_manifest", "keep_alive_s"),
    ("keep-alive-1e999", "post", "/v1/functions", {"data": b'{"name":"evil","model":"preprocess","keep_alive_s":1e999}', "headers": JSON_CT},
     422, "invalid_manifest", "keep_alive_s"),
    ("keep-alive-NaN", "post", "/v1/functions", {"data": b'{"name":"evil","model":"preprocess","keep_alive_s":NaN}', "headers": JSON_CT},
     400, "bad_json", "NaN"),
    ("keep-alive-negative", "post", "/v1/functions", {"json": fn(keep_alive_s=-1)}, 422, "invalid_manifest", "keep_alive_s"),
    ("name-dotdot", "post", "/v1/functions", {"json": fn(name="../evil")}, 422, "invalid_manifest", "name"),
    ("name-slash", "post", "/v1/functions", {"json": fn(name="a/b")}, 422, "invalid_manifest", "name"),
    ("name-too-long", "post", "/v1/functions", {"json": fn(name="e" * (MAX_NAME_LEN + 1))}, 422, "invalid_manifest", "name"),
    ("name-nul", "post", "/v1/functions", {"json": fn(name="evil\x00")}, 422, "invalid_manifest", "name"),
    ("name-upper", "post", "/v1/functions", {"json": fn(name="Evil")}, 422, "invalid_manifest", "name"),
    ("name-number", "post", "/v1/functions", {"json": fn(name=5)}, 422, "invalid_manifest", "name"),
    ("handler-path", "post", "/v1/functions", {"json": fn(handler="../../etc/passwd:x")}, 422, "invalid_manifest", "handler"),
    ("handler-missing", "post", "/v1/functions", {"json": bundle({"other.py": "x = 1\n"})}, 422, "invalid_manifest", "spec.handler"),
    ("handler-pkg-missing", "post", "/v1/functions", {"json": bundle({"handler.py": "\n"}, handler="pkg.mod:build")},
     422, "invalid_manifest", "pkg/mod.py"),
    ("input-negative-dim", "post", "/v1/functions", {"json": fn(inputs={"x": {"dtype": "float32", "shape": [-1]}})}, 422, "invalid_manifest",
     "inputs.x.shape"),
    ("input-huge", "post", "/v1/functions", {"json": fn(inputs={"x": {"dtype": "float32", "shape": [2**31] * 3}})}, 422, "invalid_manifest",
     "inputs.x"),
    ("input-zero-and-huge", "post", "/v1/functions", {"json": fn(inputs={"x": {"dtype": "float32", "shape": [0, 10**30]}})}, 422,
     "invalid_manifest", "inputs.x.shape"),
    ("input-many-dims", "post", "/v1/functions", {"json": fn(inputs={"x": {"dtype": "uint8", "shape": [1] * (MAX_TENSOR_DIMS + 1)}})}, 422,
     "invalid_manifest", "inputs.x.shape"),
    ("input-dtype", "post", "/v1/functions", {"json": fn(outputs={"y": {"dtype": "object", "shape": [1]}})}, 422, "invalid_manifest",
     "outputs.y.dtype"),
    ("batch-huge", "post", "/v1/functions", {"json": fn(batch_sizes=[10**30])}, 422, "invalid_manifest", "batch_sizes"),
    ("share-nan", "post", "/v1/functions", {"data": b'{"name":"evil","model":"preprocess","shares":[Infinity]}', "headers": JSON_CT},
     400, "bad_json", "Infinity"),
    ("file-nul", "post", "/v1/functions", {"json": bundle({"handler.py": "", "a\x00b.py": "x"})}, 422, "invalid_manifest", "files."),
    ("file-name-256", "post", "/v1/functions", {"json": bundle({"handler.py": "", "a" * 256: "x"})}, 422, "invalid_manifest", "files."),
    ("file-part-256-bytes", "post", "/v1/functions", {"json": bundle({"handler.py": "", "d/" + "\u00e9" * 128: "x"})}, 422,
     "invalid_manifest", "255"),
    ("file-folder-clash", "post", "/v1/functions", {"json": bundle({"handler.py": "", "a": "x", "a/b": "y"})}, 422, "invalid_manifest",
     "files.a/b"),
    ("file-same-twice", "post", "/v1/functions", {"json": bundle({"handler.py": "", "a//b.py": "x", "a/./b.py": "y"})}, 422,
     "invalid_manifest", "a/b.py"),
    ("file-absolute", "post", "/v1/functions", {"json": bundle({"handler.py": "", "/etc/cron.d/x": "x"})}, 422, "invalid_manifest",
     "files./etc/cron.d/x"),
    ("file-dotdot", "post", "/v1/functions", {"json": bundle({"handler.py": "", "a/../../x.py": "x"})}, 422, "invalid_manifest",
     "files.a/../../x.py"),
    ("file-function-yaml", "post", "/v1/functions", {"json": bundle({"handler.py": "", "function.yaml": "x"})}, 422, "invalid_manifest",
     "files.function.yaml"),
    ("file-surrogate", "post", "/v1/functions", {"data": b'{"spec":{"name":"evil","model":"preprocess"},"files":{"handler.py":"\\ud800"}}',
                                                 "headers": JSON_CT}, 422, "invalid_manifest", "files.handler.py"),
    ("file-too-big", "post", "/v1/functions", {"json": bundle({"handler.py": "#" * (MAX_BUNDLE_FILE_BYTES + 1)})}, 422, "invalid_manifest",
     "files.handler.py"),
    ("files-too-many", "post", "/v1/functions", {"json": bundle({"handler.py": "", **{f"m{i}.py": "" for i in range(MAX_BUNDLE_FILES)}})},
     422, "invalid_manifest", "files"),
    ("files-not-a-map", "post", "/v1/functions", {"json": {"spec": fn(), "files": ["handler.py"]}}, 422, "invalid_manifest", "files"),
    ("spec-not-a-map", "post", "/v1/functions", {"json": {"spec": "evil"}}, 422, "invalid_manifest", "spec"),
    ("function-body-list", "post", "/v1/functions", {"json": [FN]}, 422, "invalid_manifest", "request body"),
    ("function-deep-json", "post", "/v1/functions", {"data": nested(100_000), "headers": JSON_CT}, 400, "bad_json", "nested too deeply"),
    ("function-deep-yaml", "post", "/v1/functions", {"data": nested(10_000), "headers": YAML_CT}, 400, "bad_yaml", "nested too deeply"),
    ("function-yaml-aliases", "post", "/v1/functions", {"data": b"a: &a [x, x]\nb: &b [*a, *a]\nname: evil\n", "headers": YAML_CT},
     400, "bad_yaml", "aliases"),
    ("function-yaml-python-tag", "post", "/v1/functions", {"data": b"!!python/object/apply:os.system [id]", "headers": YAML_CT},
     400, "bad_yaml", "python/object"),
    ("function-msgpack-ext", "post", "/v1/functions", {"data": msgpack.packb({"name": msgpack.ExtType(5, b"x")}), "headers": MSGPACK},
     400, "bad_msgpack", "extension type 5"),
    ("function-msgpack-bin-key", "post", "/v1/functions", {"data": msgpack.packb({b"name": "evil", "model": "x"}, use_bin_type=True),
                                                          "headers": MSGPACK}, 400, "bad_msgpack", "keys must be strings"),
    ("function-big-int-literal", "post", "/v1/functions", {"data": b'{"name":"evil","model":"preprocess","batch_sizes":[' + b"9" * 5000 + b"]}",
                                                          "headers": JSON_CT}, 400, "bad_json", "integer"),
    ("function-not-utf8", "post", "/v1/functions", {"data": b'{"name":"\xff\xfe"}', "headers": JSON_CT}, 400, "bad_json", "JSON"),
    # ---- workflows: SLO range, stage limits, names and references
    ("slo-1e308", "post", "/v1/workflows", {"json": wf(slo_ms=1e308)}, 422, "invalid_manifest", "slo_ms"),
    ("slo-1e999", "post", "/v1/workflows", {"data": json.dumps(wf()).replace('"slo_ms": 1000', '"slo_ms": 1e999').encode(),
                                            "headers": JSON_CT}, 422, "invalid_manifest", "slo_ms"),
    ("slo-just-over-a-year", "post", "/v1/workflows", {"json": wf(slo_ms=MAX_DURATION_MS * 1.001)}, 422, "invalid_manifest", "slo_ms"),
    ("slo-string", "post", "/v1/workflows", {"json": wf(slo_ms="soon")}, 422, "invalid_manifest", "slo_ms"),
    ("stages-too-many", "post", "/v1/workflows", {"json": wf(stages=chain(MAX_STAGES + 1))}, 422, "invalid_manifest", "stages"),
    ("stages-none", "post", "/v1/workflows", {"json": wf(stages=[])}, 422, "invalid_manifest", "stages"),
    ("after-too-many", "post", "/v1/workflows", {"json": wf(stages=[*chain(2), {"name": "z", "function": "f1", "after": ["s0"] * (MAX_AFTER + 1)}])},
     422, "invalid_manifest", "stages.2.after"),
    ("after-twice", "post", "/v1/workflows", {"json": wf(stages=[*chain(2), {"name": "z", "function": "f1", "after": ["s0", "s1", "s0"]}])},
     422, "invalid_manifest", "more than once"),
    ("after-path", "post", "/v1/workflows", {"json": wf(stages=[{"name": "s", "function": "f1", "after": ["../s"]}])}, 422,
     "invalid_manifest", "stages.0.after.0"),
    ("after-unknown", "post", "/v1/workflows", {"json": wf(stages=[{"name": "s", "function": "f1", "after": ["ghost"]}])}, 422,
     "invalid_manifest", "ghost"),
    ("after-cycle", "post", "/v1/workflows", {"json": wf(stages=[{"name": "a", "function": "f1", "after": ["b"]},
                                                                 {"name": "b", "function": "f1", "after": ["a"]}])}, 422, "invalid_manifest", "cycle"),
    ("stage-function-path", "post", "/v1/workflows", {"json": wf(stages=[{"name": "s", "function": "../../f1"}])}, 422, "invalid_manifest",
     "stages.0.function"),
    ("stage-function-unknown", "post", "/v1/workflows", {"json": wf(stages=[{"name": "s", "function": "ghost"}])}, 422, "invalid_manifest",
     "ghost"),
    ("stage-name-slash", "post", "/v1/workflows", {"json": wf(stages=[{"name": "a/b", "function": "f1"}])}, 422, "invalid_manifest",
     "stages.0.name"),
    ("workflow-name-empty", "post", "/v1/workflows", {"json": wf(name="")}, 422, "invalid_manifest", "name"),
    ("workflow-body-list", "post", "/v1/workflows", {"json": [WF]}, 422, "invalid_manifest", "top level"),
    ("workflow-body-number", "post", "/v1/workflows", {"json": 5}, 422, "invalid_manifest", "top level"),
    ("workflow-deep-msgpack", "post", "/v1/workflows", {"data": b"\x91" * 100_000 + b"\xc0", "headers": MSGPACK}, 400, "bad_msgpack", "msgpack"),
    ("workflow-wrong-type", "post", "/v1/workflows", {"data": b"name: w", "headers": {"Content-Type": "text/plain"}}, 415,
     "unsupported_media_type", "Content-Type"),
    # ---- invoke: SLO override, tensor maps (msgpack), nested lists (JSON), bodies
    ("invoke-slo-1e308", "post", "/v1/workflows/w/invoke", {"json": {"slo_ms": 1e308}}, 422, "invalid_slo", "slo_ms"),
    ("invoke-query-slo-1e308", "post", "/v1/workflows/w/invoke?slo_ms=1e308", {"json": {}}, 422, "invalid_slo", "query slo_ms"),
    ("invoke-query-slo-nan", "post", "/v1/workflows/w/invoke?slo_ms=nan", {"json": {}}, 422, "invalid_slo", "query slo_ms"),
    ("tensor-negative-dim", "post", "/v1/workflows/w/invoke", {"data": tensor(shape=[-1]), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.shape"),
    ("tensor-bool-dim", "post", "/v1/workflows/w/invoke", {"data": tensor(shape=[True]), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.shape"),
    ("tensor-shape-string", "post", "/v1/workflows/w/invoke", {"data": tensor(shape="4"), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.shape"),
    ("tensor-too-many-dims", "post", "/v1/workflows/w/invoke", {"data": tensor(shape=[1] * 65), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.shape"),
    ("tensor-product-overflow", "post", "/v1/workflows/w/invoke", {"data": tensor(shape=[2**63 - 1] * 32), "headers": MSGPACK}, 422,
     "invalid_payload", "data.x.shape"),
    ("tensor-empty-but-huge", "post", "/v1/workflows/w/invoke", {"data": tensor(shape=[0, 2**40, 2**40], data=b""), "headers": MSGPACK}, 422,
     "invalid_payload", "data.x.shape"),
    ("tensor-byte-count", "post", "/v1/workflows/w/invoke", {"data": tensor(shape=[2]), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.data"),
    ("tensor-dtype-list", "post", "/v1/workflows/w/invoke", {"data": tensor(dtype=["float32"]), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.dtype"),
    ("tensor-dtype-object", "post", "/v1/workflows/w/invoke", {"data": tensor(dtype="object"), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.dtype"),
    ("tensor-data-int", "post", "/v1/workflows/w/invoke", {"data": tensor(data=5), "headers": MSGPACK}, 422, "invalid_payload", "data.x.data"),
    ("tensor-data-str", "post", "/v1/workflows/w/invoke", {"data": tensor(data="AAAA"), "headers": MSGPACK}, 422, "invalid_payload",
     "data.x.data"),
    ("tensor-extra-key", "post", "/v1/workflows/w/invoke", {"data": tensor(strides=[4]), "headers": MSGPACK}, 422, "invalid_payload", "strides"),
    ("tensor-nan", "post", "/v1/workflows/w/invoke", {"data": tensor(data=np.array([np.nan], np.float32).tobytes()), "headers": MSGPACK},
     422, "invalid_payload", "NaN"),
    ("list-strings", "post", "/v1/workflows/w/invoke", {"json": {"data": {"x": ["a", "b"]}}}, 422, "invalid_payload", "data.x"),
    ("list-ragged", "post", "/v1/workflows/w/invoke", {"json": {"data": {"x": [[1, 2], [3]]}}}, 422, "invalid_payload", "data.x"),
    ("list-big-int", "post", "/v1/workflows/w/invoke", {"json": {"data": {"x": [2**70]}}}, 422, "invalid_payload", "data.x"),
    ("list-inf", "post", "/v1/workflows/w/invoke", {"data": b'{"data":{"x":[1e999]}}', "headers": JSON_CT}, 422, "invalid_payload", "data.x"),
    ("list-null", "post", "/v1/workflows/w/invoke", {"json": {"data": {"x": None}}}, 422, "invalid_payload", "data.x"),
    ("list-deep", "post", "/v1/workflows/w/invoke", {"data": b'{"data":{"x":' + b"[" * 100 + b"1" + b"]" * 100 + b"}}", "headers": JSON_CT},
     422, "invalid_payload", "data.x"),
    ("data-not-a-map", "post", "/v1/workflows/w/invoke", {"json": {"data": [1, 2]}}, 422, "invalid_payload", "data"),
    ("invoke-body-list", "post", "/v1/workflows/w/invoke", {"json": [1]}, 400, "bad_request", "request body"),
    ("invoke-body-string", "post", "/v1/workflows/w/invoke", {"data": msgpack.packb("x"), "headers": MSGPACK}, 400, "bad_request", "request body"),
    ("invoke-deep-json", "post", "/v1/workflows/w/invoke", {"data": b'{"data":{"x":' + nested(100_000) + b"}}", "headers": JSON_CT},
     400, "bad_json", "nested too deeply"),
    ("invoke-garbage-msgpack", "post", "/v1/workflows/w/invoke", {"data": b"\xc1\xc1", "headers": MSGPACK}, 400, "bad_msgpack", "msgpack"),
    ("invoke-msgpack-timestamp", "post", "/v1/workflows/w/invoke", {"data": msgpack.packb({"slo_ms": msgpack.Timestamp(1, 0)}, datetime=False),
                                                                    "headers": MSGPACK}, 422, "invalid_slo", "slo_ms"),
    # ---- names in paths: a name that cannot exist is an ordinary 404
    ("path-name-long", "get", "/v1/functions/" + "e" * 5000, {}, 404, "not_found", "unknown function"),
    ("path-name-dotdot", "get", "/v1/workflows/..%2F..%2Fetc", {}, 404, "not_found", "unknown workflow"),
    ("path-name-newline", "delete", "/v1/functions/f1%0A%00x", {}, 404, "not_found", "unknown function 'f1\\n\\x00x'"),
    ("path-invoke-unknown", "post", "/v1/workflows/..%2Fw/invoke", {"json": {}}, 404, "not_found", "unknown workflow"),
    # ---- tenants (admin routes): bodies that are not objects
    ("tenant-body-list", "post", "/v1/tenants", {"json": [1]}, 422, "invalid", "request body"),
    ("tenant-patch-list", "patch", "/v1/tenants/default", {"json": [1]}, 422, "invalid", "request body"),
]


@pytest.fixture
async def gw(aiohttp_client, tmp_path):
    c = await aiohttp_client(create_app(make_cfg(tmp_path, policy="batch1-wholegpu")), headers=AUTH)
    assert (await c.post("/v1/functions", json=FN)).status == 201
    assert (await c.post("/v1/workflows", json=WF)).status == 201
    return c


async def deployed(c) -> tuple[list[str], list[str]]:
    fns = (await (await c.get("/v1/functions")).json())["functions"]
    wfs = (await (await c.get("/v1/workflows")).json())["workflows"]
    return sorted(f["name"] for f in fns), sorted(w["name"] for w in wfs)


def test_every_case_has_a_unique_id():
    ids = [case[0] for case in HOSTILE]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("method, path, kw, status, code, needle", [c[1:] for c in HOSTILE], ids=[c[0] for c in HOSTILE])
async def test_hostile_request_gets_a_json_4xx_naming_the_field_and_deploys_nothing(gw, tmp_path, method, path, kw, status, code, needle):
    resp = await getattr(gw, method)(path, **kw)
    await expect_error(resp, status, code, needle)
    assert await deployed(gw) == (["f1"], ["w"])
    # no bundle, staging or check folder was left behind: f1's (written from its bare spec) is the only one
    assert sorted(p.name for p in (tmp_path / "gw" / "bundles").iterdir()) == ["f1"]
    # the gateway still serves: the deployed workflow runs
    r = await gw.post("/v1/workflows/w/invoke", json={})
    assert r.status == 200 and (await r.json())["status"] == "completed"


async def test_nothing_hostile_is_restored_after_a_restart(aiohttp_client, tmp_path):
    """Every hostile deploy against one gateway, then a fresh gateway on the same data dir: it restores f1
    and w only, without a restore error (nothing bad was written to the store)."""
    cfg = make_cfg(tmp_path, policy="batch1-wholegpu")
    c = await aiohttp_client(create_app(cfg), headers=AUTH)
    assert (await c.post("/v1/functions", json=FN)).status == 201
    assert (await c.post("/v1/workflows", json=WF)).status == 201
    for _, method, path, kw, status, _, _ in HOSTILE:
        if path in ("/v1/functions", "/v1/workflows"):
            assert (await getattr(c, method)(path, **kw)).status == status
    await c.close()
    again = await aiohttp_client(create_app(cfg), headers=AUTH)
    assert await deployed(again) == (["f1"], ["w"])
    assert again.server.app[PLATFORM].restore_errors == []


# ---------------------------------------------------------------- the limits at their edges


async def test_the_longest_durations_deploy_and_run(gw):
    """keep_alive_s and slo_ms at their maximum (a year) deploy, and an invocation under that SLO runs: its
    deadline and the instance's keep-alive are int64 nanoseconds on the clock."""
    assert (await gw.post("/v1/functions", json=fn(name="long", keep_alive_s=MAX_DURATION_S))).status == 201
    slow = {"name": "slow", "slo_ms": MAX_DURATION_MS, "stages": [{"name": "s", "function": "long"}]}
    assert (await gw.post("/v1/workflows", json=slow)).status == 201
    r = await gw.post("/v1/workflows/slow/invoke", json={"slo_ms": MAX_DURATION_MS})
    d = await r.json()
    assert r.status == 200 and d["status"] == "completed" and d["slo_ms"] == MAX_DURATION_MS


async def test_a_workflow_of_max_stages_deploys_and_one_more_does_not(gw):
    assert (await gw.post("/v1/workflows", json=wf(name="long", stages=chain(MAX_STAGES)))).status == 201
    fan_in = [*chain(MAX_STAGES - 1), {"name": "z", "function": "f1", "after": [f"s{i}" for i in range(MAX_STAGES - 1)]}]
    assert len(fan_in[-1]["after"]) == MAX_AFTER
    assert (await gw.post("/v1/workflows", json=wf(name="wide", stages=fan_in))).status == 201
    await expect_error(await gw.post("/v1/workflows", json=wf(name="longer", stages=chain(MAX_STAGES + 1))), 422, "invalid_manifest",
                       f"at most {MAX_STAGES}")


def test_unit_conversions_refuse_what_does_not_fit_the_clock():
    assert ms_to_ns(MAX_DURATION_MS) == MAX_DURATION_S * 10**9 and s_to_ns(MAX_DURATION_S) == MAX_DURATION_S * 10**9
    # a clock a century past its origin still adds a deadline, a keep-alive and a cold start inside int64
    assert 100 * 365 * 86400 * 10**9 + 3 * s_to_ns(MAX_DURATION_S) < INT64_MAX_NS
    for bad in (math.nan, math.inf, -math.inf, 1e308, MAX_DURATION_MS * 1.0001):
        with pytest.raises(ValueError, match="MAX_DURATION_S"):
            ms_to_ns(bad)
    with pytest.raises(ValueError, match="MAX_DURATION_S"):
        s_to_ns(MAX_DURATION_S + 1)


@pytest.mark.parametrize("value, ok", [(1, True), ("250ms", True), (MAX_DURATION_MS, True), (MAX_DURATION_MS + 1, False), ("1e308", False),
                                       (math.inf, False), (math.nan, False), (0, False), (-1, False), (True, False), ([1], False), ("x" * 10_000, False)])
def test_parse_slo_ms_range(value, ok):
    if ok:
        assert 0 < parse_slo_ms(value) <= MAX_DURATION_MS
    else:
        with pytest.raises(BadInput) as e:
            parse_slo_ms(value)
        assert e.value.code == "invalid_slo" and str(e.value).startswith("slo_ms:") and len(str(e.value)) < 300


def test_bundle_files_limits_and_paths():
    assert bundle_files({"handler.py": "x", "./lib/util.py": "y"}) == {"handler.py": b"x", "lib/util.py": b"y"}
    ok_part = "\u00e9" * 127  # 254 bytes in UTF-8: a part is measured in bytes, not characters
    assert list(bundle_files({f"d/{ok_part}": ""})) == [f"d/{ok_part}"]
    each = MAX_BUNDLE_FILE_BYTES
    with pytest.raises(ApiError, match="in all") as e:
        bundle_files({f"m{i}.py": "#" * each for i in range(MAX_BUNDLE_BYTES // each + 1)})
    assert e.value.status == 422
    for bad in ({"a": "", "a/b/c": ""}, {"x\n.py": ""}, {"a/" * 600 + "b": ""}, {"": ""}, {"..": ""}, {"/x": ""}):
        with pytest.raises(ApiError) as e:
            bundle_files(bad)
        assert e.value.status == 422 and e.value.message.startswith("files.") and "\n" not in e.value.message


@pytest.mark.parametrize("shape, raw, offset, part", [([0, 2**40, 2**40], b"", 0, "shape"), ([2**62] * 32, b"", 0, "shape"),
                                                     ([True], b"\0", 0, "shape"), ([1] * 33, b"\0", 0, "shape"), ([3], b"\0\0", 0, "data"),
                                                     ([2], b"\0\0", 2**63 - 1, "data"), ([1], b"\0", True, "data"), ([1], b"\0", 0.0, "data")])
def test_wire_refuses_tensor_headers(shape, raw, offset, part):
    ext = msgpack.ExtType(wire.TENSOR_EXT, msgpack.packb(["uint8", shape, offset], use_bin_type=True))
    with pytest.raises(wire.WireError, match=f"malformed tensor.*: {part}: "):
        wire.decode(wire_body({"v": wire.VERSION, "k": int(wire.Kind.BATCH), "items": [ext]}, raw))


# ---------------------------------------------------------------- fuzzing: only our own error types come out

# JSON-like values, as JSON or msgpack decode them (and worse: bytes, NaN, huge ints, deep nesting)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(),
                    st.text(max_size=12), st.binary(max_size=16))
JSON_LIKE = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
                         max_leaves=30)
DTYPES = sorted(wire._DTYPES | {"bfloat16", "object", "complex64", "<f4", "float32 "})
SHAPES = st.one_of(st.lists(st.integers(min_value=-3, max_value=6), max_size=5), st.lists(st.integers(), max_size=70), JSON_LIKE)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_array(arr: np.ndarray) -> None:
    assert isinstance(arr, np.ndarray) and arr.dtype.kind in "biuf" and arr.ndim <= 64
    if arr.dtype.kind == "f":
        assert np.isfinite(arr).all()


@FUZZ
@given(name=st.text(max_size=8), value=JSON_LIKE, spec_dtype=st.sampled_from([None, "float32", "uint8", "int64", "bool", "bfloat16"]))
def test_fuzz_decode_tensor_json_values(name, value, spec_dtype):
    try:
        arr = decode_tensor(name, value, spec_dtype)
    except BadInput as e:
        assert e.code == "invalid_payload" and str(e).startswith("data.")
        return
    _check_array(arr)


@FUZZ
@given(dtype=st.one_of(st.sampled_from(DTYPES), JSON_LIKE), shape=SHAPES, data=st.one_of(st.binary(max_size=64), JSON_LIKE),
       extra=st.dictionaries(st.sampled_from(["dtype", "shape", "data", "strides", ""]), JSON_LIKE, max_size=2))
def test_fuzz_decode_tensor_maps(dtype, shape, data, extra):
    value = {"dtype": dtype, "shape": shape, "data": data, **extra}
    try:
        arr = decode_tensor("x", value, None)
    except BadInput as e:
        assert e.code == "invalid_payload" and str(e).startswith("data.x")
        return
    _check_array(arr)
    assert arr.nbytes == len(value["data"]) and list(arr.shape) == value["shape"]


@FUZZ
@given(body=st.binary(max_size=200))
def test_fuzz_wire_decode_raw_bytes(body):
    try:
        kind, msg = wire.decode_frame(body)
    except wire.WireError:
        return
    assert isinstance(kind, wire.Kind) and isinstance(msg, dict)


@FUZZ
@given(dtype=st.one_of(st.sampled_from(DTYPES), JSON_LIKE), shape=SHAPES, data=st.binary(max_size=64),
       offset=st.one_of(st.integers(min_value=-2, max_value=70), JSON_LIKE),
       kind=st.integers(min_value=-1, max_value=9), version=st.sampled_from([2, 2, 1, 0, None, "2"]))
def test_fuzz_wire_decode_tensor_headers(dtype, shape, data, offset, kind, version):
    try:
        ext = msgpack.ExtType(wire.TENSOR_EXT, msgpack.packb([dtype, shape, offset], use_bin_type=True))
    except (OverflowError, ValueError):  # a header msgpack cannot hold at all (an int past 64 bits)
        return
    body = wire_body({"v": version, "k": kind, "items": [{"x": ext}]}, data)
    try:
        _, msg = wire.decode(body)
    except wire.WireError:
        return
    arr = msg["items"][0]["x"]
    assert arr.dtype.name == dtype and list(arr.shape) == shape and offset + arr.nbytes <= len(data)
    assert arr.tobytes() == data[offset:offset + arr.nbytes] and not arr.flags.writeable


NAMES = st.sampled_from(["a", "b", "c", "f1", "A", "../a", "", "a" * 70, "a/b"])
STAGE = st.fixed_dictionaries({"name": NAMES, "function": NAMES}, optional={"after": st.lists(NAMES, max_size=4), "x": JSON_LIKE})
WORKFLOW_FIELDS = {"name": st.one_of(NAMES, JSON_LIKE), "slo_ms": st.one_of(st.floats(), st.integers(), JSON_LIKE),
                   "stages": st.one_of(st.lists(STAGE, max_size=6), st.lists(STAGE, min_size=MAX_STAGES, max_size=MAX_STAGES + 2), JSON_LIKE),
                   "priority": st.one_of(st.sampled_from(["realtime", "batch", "x"]), JSON_LIKE), "tenant": JSON_LIKE, "extra": JSON_LIKE}
FUNCTION_FIELDS = {"name": st.one_of(NAMES, JSON_LIKE), "model": st.one_of(st.just("preprocess"), JSON_LIKE),
                   "handler": st.one_of(st.sampled_from(["handler:build", "pkg.mod:f", "../x:y", "a:", ":b", "a:b:c"]), JSON_LIKE),
                   "batch_sizes": st.one_of(st.lists(st.integers(), max_size=4), JSON_LIKE),
                   "shares": st.one_of(st.lists(st.floats(), max_size=4), JSON_LIKE),
                   "keep_alive_s": st.one_of(st.floats(), st.integers(), JSON_LIKE),
                   "inputs": st.one_of(st.dictionaries(st.text(max_size=3), st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(DTYPES), JSON_LIKE),
                                                                                                    "shape": SHAPES}), max_size=2), JSON_LIKE),
                   "outputs": JSON_LIKE, "inputs_any_float": JSON_LIKE, "description": JSON_LIKE, "extra": JSON_LIKE}


def _manifest(fields: dict) -> st.SearchStrategy:
    """Manifests near the valid ones (each field valid-ish or arbitrary, any subset present), or anything."""
    return st.one_of(st.fixed_dictionaries({}, optional=fields), JSON_LIKE)


@FUZZ
@given(data=_manifest(WORKFLOW_FIELDS))
def test_fuzz_workflow_manifest_loader(data):
    try:
        spec = parse(WorkflowSpec, data, "fuzz")
    except SpecError as e:
        assert str(e).startswith("fuzz: ")
        return
    import re

    assert 1 <= len(spec.stages) <= MAX_STAGES and re.fullmatch(NAME_RE, spec.name)
    assert all(re.fullmatch(NAME_RE, n) for s in spec.stages for n in (s.name, s.function, *s.after))
    assert 0 < ms_to_ns(spec.slo_ms) <= INT64_MAX_NS


@FUZZ
@given(data=_manifest(FUNCTION_FIELDS))
def test_fuzz_function_manifest_loader(data):
    try:
        spec = parse(FunctionSpec, data, "fuzz")
    except SpecError as e:
        assert str(e).startswith("fuzz: ")
        return
    if spec.keep_alive_s is not None:
        assert 0 <= s_to_ns(spec.keep_alive_s) <= INT64_MAX_NS
    assert spec.handler_file.endswith(".py") and ".." not in spec.handler_file.split("/")
    assert all(0 <= t.nbytes <= 1 << 30 for t in (*spec.inputs.values(), *spec.outputs.values()))


@settings(max_examples=150, deadline=None)
@given(name=st.text(alphabet=string.printable + "\x00\u00e9\ud7ff", max_size=300), text=st.text(max_size=20))
def test_fuzz_bundle_paths(name, text):
    try:
        out = bundle_files({"handler.py": "", name: text})
    except ApiError as e:
        assert e.status == 422 and e.message.startswith("files") and "\n" not in e.message
        return
    for rel in out:
        assert not rel.startswith("/") and ".." not in rel.split("/") and "\x00" not in rel and len(rel.encode()) <= 1024
