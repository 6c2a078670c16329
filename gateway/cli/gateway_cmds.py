"""`gpufaas up | deploy | ls | describe | rm | invoke`: run a gateway and talk to one.

Exit codes scripts can trust:
  0  done (for invoke: the invocation completed; with --async: it was accepted)
  1  the invocation ended failed, rejected or timed out (or the gateway had an internal error)
  2  bad input: a flag, a file, or a request the gateway refused (4xx) -- one line on stderr
  3  no gateway answered at the address

The gateway address is `--gateway`, else $GPUFAAS_GATEWAY, else http://127.0.0.1:8080 (client.resolve_gateway).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from gpufaas.gateway.config import BACKENDS, GatewayConfig
from gpufaas.platform.errors import UserError

gateway_opt = click.option("--gateway", "gateway", default=None, metavar="URL",
                           help="gateway address [default: $GPUFAAS_GATEWAY or http://127.0.0.1:8080]")
json_opt = click.option("--json", "as_json", is_flag=True, help="print one JSON object (for scripts)")


def _client(gateway: str | None):
    from gpufaas.gateway.client import Client, resolve_gateway

    return Client(resolve_gateway(gateway))


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


def _table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    Console().print(t)


_FLAGS = {"max_body_mb": "--max-body-mb", "invocation_timeout_s": "--timeout-s", "keep_alive_s": "--keep-alive-s",
          "cold_start_scale": "--cold-start-scale", "port": "--port", "host": "--host", "(top level)": "--execute"}


def _D(field: str) -> Any:
    """`GatewayConfig`'s default for `field`: the one source of `up`'s defaults."""
    return GatewayConfig.model_fields[field].default


@click.command()
@click.option("--host", default=_D("host"), show_default=True, help="address to listen on")
@click.option("--port", type=click.IntRange(0, 65535), default=_D("port"), show_default=True, help="TCP port")
@click.option("--cluster", "cluster_file", type=click.Path(dir_okay=False), default=None,
              help="cluster YAML [default: one node with four A100-80GB]")
@click.option("--policy", default=None, help="scheduling policy [default: esg if registered, else batch1-wholegpu]")
@click.option("--backend", type=click.Choice(list(BACKENDS)), default=_D("backend"), show_default=True,
              help="where instances run")
@click.option("--execute", type=click.Choice(["emulated", "real"]), default=_D("execute"), show_default=True,
              help="emulated: hold each batch for its profiled GPU latency; real: run the handler")
@click.option("--data-dir", type=click.Path(file_okay=False), default=str(_D("data_dir")), show_default=True,
              help="folder of the SQLite store and uploaded bundles")
@click.option("--max-body-mb", type=float, default=_D("max_body_mb"), show_default=True, help="largest request body (413 above)")
@click.option("--timeout-s", "timeout_s", type=float, default=_D("invocation_timeout_s"), show_default=True, help="per-invocation timeout")
@click.option("--keep-alive-s", type=float, default=_D("keep_alive_s"), show_default=True, help="idle time before an instance stops")
@click.option("--cold-start-scale", type=float, default=_D("cold_start_scale"), show_default=True, help="inproc backend: scale profiled cold starts")
@click.option("--profiles", "profiles_dirs", multiple=True, type=click.Path(exists=True, file_okay=False), metavar="DIR",
              help="folder of profile YAML files, searched before the shipped profiles (repeatable; the first wins)")
@click.option("--set", "sets", multiple=True, metavar="POLICY.KEY=VALUE",
              help="a parameter of the policy (repeatable), e.g. --set esg.target_hit=0.999; see `gpufaas policies`")
@click.option("--access-log", is_flag=True, help="log every request")
def up(host, port, cluster_file, policy, backend, execute, data_dir, max_body_mb, timeout_s, keep_alive_s, cold_start_scale,
       profiles_dirs, sets, access_log) -> None:
    """Run the gateway (with the platform embedded) until Ctrl-C / SIGTERM."""
    from pydantic import ValidationError

    from gpufaas.gateway.app import resolve_policy_name, run
    from gpufaas.platform.policy.params import parse_set
    from gpufaas.platform.policy.registry import builtin_registry
    from gpufaas.platform.specs import format_validation_error

    if cluster_file is not None and not Path(cluster_file).is_file():
        raise UserError(f"--cluster: {cluster_file}: file not found; check the path")
    reg = builtin_registry()
    policy_name = resolve_policy_name(policy)
    if policy_name not in reg and ":" not in policy_name:
        raise UserError(f"--policy: unknown policy '{policy}'; registered policies: {', '.join(reg.names())}")
    overrides = parse_set(sets)
    for name in overrides:
        if name != policy_name:
            raise UserError(f"--set: policy '{name}' is not the gateway's (--policy {policy_name}); drop its --set")
    params = overrides.get(policy_name, {})
    try:
        reg.check(policy_name, params)  # before anything starts: one line naming the key and its range
    except UserError as e:
        raise UserError(f"--set: {e}") from None
    try:
        cfg = GatewayConfig(host=host, port=port, cluster_file=cluster_file, policy=policy, policy_params=params,
                            backend=backend, execute=execute,
                            data_dir=Path(data_dir), max_body_mb=max_body_mb, invocation_timeout_s=timeout_s,
                            keep_alive_s=keep_alive_s, cold_start_scale=cold_start_scale, access_log=access_log)
    except ValidationError as e:
        msg = format_validation_error(e, "gpufaas up")
        for field, flag in _FLAGS.items():
            msg = msg.replace(f"gpufaas up: {field}:", f"gpufaas up: {flag}:")
        msg = msg.replace("--execute: execute: real needs backend process", "--execute real needs --backend process")
        raise UserError(msg) from None
    dirs = tuple(Path(d) for d in profiles_dirs)
    if dirs:
        from gpufaas.platform.profiles import Profiles

        Profiles.with_dirs(dirs)  # a file that does not validate fails here (ProfileError naming it), not at start
    try:
        run(cfg, print_fn=lambda s: click.echo(s, err=True), profiles_dirs=dirs)
    except OSError as e:
        raise UserError(f"--port: cannot listen on {host}:{port}: {e.strerror}; pick another port") from None


@click.command()
@click.option("-f", "--file", "stack_file", type=click.Path(dir_okay=False), default=None,
              help="stack manifest [default: ./stack.yaml or ./stack.yml]")
@gateway_opt
@json_opt
def deploy(stack_file, gateway, as_json) -> None:
    """Deploy the functions and workflows of a stack manifest (version: "1", ${VAR} substituted)."""
    from gpufaas.gateway.client import deploy_stack, load_stack

    if stack_file is None:
        found = [p for p in ("stack.yaml", "stack.yml") if Path(p).is_file()]
        if not found:
            raise UserError("-f: no stack.yaml or stack.yml here; name one with -f FILE")
        stack_file = found[0]
    items = load_stack(stack_file)
    results = deploy_stack(_client(gateway), items)
    if as_json:
        _print_json({"deployed": results})
    else:
        _table(f"deployed {stack_file}", ["kind", "name", "result"], [[r["kind"], r["name"], r["result"]] for r in results])


@click.command("ls")
@gateway_opt
@json_opt
def ls(gateway, as_json) -> None:
    """List deployed functions and workflows."""
    c = _client(gateway)
    fns = c.get("/v1/functions")["functions"]
    wfs = c.get("/v1/workflows")["workflows"]
    if as_json:
        _print_json({"functions": fns, "workflows": wfs})
        return
    _table("functions", ["name", "model", "instances", "files"], [[f["name"], f["model"], f["instances"], ", ".join(f["files"])] for f in fns])
    _table("workflows", ["name", "SLO ms", "stages"], [[w["name"], f"{w['slo_ms']:g}", " -> ".join(w["stages"])] for w in wfs])


@click.command()
@click.argument("name")
@gateway_opt
@json_opt
def describe(name, gateway, as_json) -> None:
    """Show one workflow or function (spec, instances, queues)."""
    import yaml

    kind, doc = _client(gateway).find(name)
    if as_json:
        _print_json(doc)
    else:
        click.echo(yaml.safe_dump(doc, sort_keys=False).rstrip())


@click.command()
@click.argument("name")
@click.option("--kind", type=click.Choice(["auto", "workflow", "function"]), default="auto", show_default=True,
              help="what NAME is (auto: a workflow if one has that name, else a function)")
@gateway_opt
@json_opt
def rm(name, kind, gateway, as_json) -> None:
    """Remove a workflow or a function (a function still used by a workflow is refused)."""
    c = _client(gateway)
    if kind == "auto":
        kind, _ = c.find(name)
    _, doc = c.request("DELETE", f"/v1/{kind}s/{name}")
    if as_json:
        _print_json(doc)
    else:
        click.echo(f"removed {kind} {name}")


def _read_data(spec: str | None):
    if spec is None:
        return None
    if spec == "-":
        text, src = sys.stdin.read(), "stdin"
    elif spec.startswith("@"):
        p = Path(spec[1:])
        try:
            text, src = p.read_text(), str(p)
        except FileNotFoundError:
            raise UserError(f"--data: {p}: file not found; check the path") from None
        except OSError as e:
            raise UserError(f"--data: {p}: cannot read: {e.strerror}") from None
    else:
        text, src = spec, "--data"
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise UserError(f"--data: {src} is not valid JSON ({e}); give a JSON object of input name -> nested lists") from None
    if not isinstance(doc, dict):
        raise UserError(f"--data: {src} must hold a JSON object of input name -> nested lists")
    return doc


@click.command()
@click.argument("workflow")
@click.option("--data", "data", default=None, metavar="@FILE|-|JSON", help="input tensors as JSON: @file, - for stdin, or inline")
@click.option("--slo-ms", type=float, default=None, help="per-request SLO override (ms)")
@click.option("--async", "is_async", is_flag=True, help="do not wait: print the invocation id (GET /v1/invocations/ID)")
@gateway_opt
@json_opt
def invoke(workflow, data, slo_ms, is_async, gateway, as_json) -> None:
    """Invoke WORKFLOW and print its result (exit 1 unless it completed)."""
    payload = _read_data(data)
    if slo_ms is not None and not slo_ms > 0:
        raise UserError(f"--slo-ms: must be > 0 ms, got {slo_ms:g}")
    st, doc = _client(gateway).invoke(workflow, payload, slo_ms, mode="async" if is_async else "sync")
    if as_json:
        _print_json(doc)
    elif is_async:
        click.echo(f"accepted {doc['id']}  (GET {doc['location']})")
    else:
        mark = "met" if doc["slo_met"] else "missed"
        click.echo(f"{doc['workflow']} {doc['id']}: {doc['status']} in {doc['latency_ms']:.1f} ms (SLO {doc['slo_ms']:g} ms {mark})"
                   + (f": {doc['reason']}" if doc.get("reason") else ""))
        _table("stages", ["stage", "function", "start ms", "end ms"],
               [[s["name"], s["function"], f"{s['start_ms']:.2f}", f"{s['end_ms']:.2f}"] for s in doc["stages"]])
    if not is_async and doc.get("status") != "completed":
        sys.exit(1)


COMMANDS = [up, deploy, ls, describe, rm, invoke]
