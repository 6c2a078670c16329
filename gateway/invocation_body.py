"""The body of an invocation's answer: a dict for msgpack and stored results, and the same document
written straight to compact JSON for the synchronous invoke (the hot path).

Who calls it: `gateway.service.Platform` (sync and async invocations, GET /v1/invocations/{id}). It
changes nothing; tests/test_gateway_api.py checks that both encodings give the same document.
"""

from __future__ import annotations

import json
from typing import Any

from gpufaas.gateway import api
from gpufaas.gateway.tenants import short
from gpufaas.platform.runtime import Invocation, InvocationStatus, WorkflowRt

STATUS_NAMES = {s: s.name.lower() for s in InvocationStatus}


# ---------------------------------------------------------------- JSON on the hot path
# `_fr` is what json writes for a finite float (float.__repr__); the result bodies only hold finite ones.
_fr = float.__repr__
_json_str = json.encoder.encode_basestring_ascii  # the default (ensure_ascii) string encoding of json.dumps


def json_shape(wf: WorkflowRt) -> tuple:
    """The constant parts of a workflow's JSON result: (wf, ',"workflow":...,', [(stage index, '{"name":...,"start_ms":')],
    exits), exits being the one exit stage's index, or [(index, encoded stage name)] for several. Names are the
    tenant's own (`tenants.short`), never the controller's."""
    head = f',"workflow":{_json_str(short(wf.name))},'
    stages = [(s.index, f'{{"name":{_json_str(s.name)},"function":{_json_str(short(s.function))},"start_ms":') for s in wf.stages]
    ex = [s for s in wf.stages if not s.succs]
    exits: Any = ex[0].index if len(ex) == 1 else [(s.index, _json_str(s.name)) for s in ex]
    return wf, head, stages, exits


def result_doc(inv: Invocation, inv_id: str, binary: bool, now_ns: int) -> dict:
    """The response body of an ended (or still pending) invocation; `now_ns` is the latency's end while pending."""
    wf = inv.workflow
    arr = inv.arrival_ns
    stages = []
    if inv.stage_ns is not None:
        for s in wf.stages:
            st, en = inv.stage_ns[s.index]
            if en >= 0:
                stages.append({"name": s.name, "function": short(s.function), "start_ms": (st - arr) / 1e6, "end_ms": (en - arr) / 1e6})
    status = STATUS_NAMES[inv.status]
    output = None
    if inv.status == InvocationStatus.COMPLETED and inv.outputs is not None:
        exits = [s for s in wf.stages if not s.succs]
        if len(exits) == 1:
            output = api.encode_output(inv.outputs[exits[0].index], binary)
        else:
            output = {s.name: api.encode_output(inv.outputs[s.index], binary) for s in exits}
    end = inv.finish_ns if inv.finish_ns >= 0 else now_ns
    return {"id": inv_id, "workflow": short(wf.name), "status": status, "slo_met": inv.slo_met,
            "slo_ms": (inv.deadline_ns - arr) / 1e6, "latency_ms": (end - arr) / 1e6, "stages": stages,
            "output": output, "reason": inv.reason}


def result_json(inv: Invocation, inv_id: str, shape: tuple, now_ns: int) -> bytes:
    """`result_doc(inv, inv_id, False, now_ns)` encoded as compact JSON, without building the dict first (the sync
    invoke's answer; tests/test_gateway_api.py checks that both give the same document).

    The constant parts of each workflow's body (names, stage headers) are encoded once per deployment;
    numbers are written with `float.__repr__`, which is what `json` writes for finite floats. `shape` is
    `json_shape(inv.workflow)`, which the caller keeps per deployment."""
    _, head, stage_heads, exits = shape
    arr = inv.arrival_ns
    end = inv.finish_ns if inv.finish_ns >= 0 else now_ns
    status = inv.status
    parts = [f'{{"id":{_json_str(inv_id)}{head}"status":"{STATUS_NAMES[status]}","slo_met":{"true" if inv.slo_met else "false"},'
             f'"slo_ms":{_fr((inv.deadline_ns - arr) / 1e6)},"latency_ms":{_fr((end - arr) / 1e6)},"stages":[']
    stage_ns = inv.stage_ns
    if stage_ns is not None:
        sep = ""
        for idx, sh in stage_heads:
            st, en = stage_ns[idx]
            if en >= 0:
                parts.append(f'{sep}{sh}{_fr((st - arr) / 1e6)},"end_ms":{_fr((en - arr) / 1e6)}}}')
                sep = ","
    outputs = inv.outputs
    if status == InvocationStatus.COMPLETED and outputs is not None:
        if type(exits) is int:
            parts.append(f'],"output":{api.encode_output_json(outputs[exits])},"reason":')
        else:
            parts.append('],"output":{' + ",".join(f"{k}:{api.encode_output_json(outputs[i])}" for i, k in exits)
                         + '},"reason":')
    else:
        parts.append('],"output":null,"reason":')
    parts.append(_json_str(inv.reason) + "}")
    return "".join(parts).encode()

