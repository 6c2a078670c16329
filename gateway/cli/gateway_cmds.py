"""`gpufaas up | deploy | ls | status | describe | rm | invoke`: run a gateway and talk to one.

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
from typing import TYPE_CHECKING, Any

import click

from gpufaas.gateway.config import BACKENDS, GatewayConfig
from gpufaas.platform.errors import UserError

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.tree import Tree

    from gpufaas.gateway.client import Client

_gateway = click.option("--gateway", "gateway", default=None, metavar="URL",
                        help="gateway address [default: $GPUFAAS_GATEWAY or http://127.0.0.1:8080]")
# NOTE: the key is kept in the click context (not passed to every command): `_client` reads it.
_api_key = click.option("--api-key", default=None, metavar="KEY", expose_value=False,
                        callback=lambda ctx, _p, v: ctx.meta.__setitem__("gpufaas.api_key", v),
                        help="API key [default: $GPUFAAS_API_KEY, else <data-dir>/admin.key for a gateway on this machine]")


def gateway_opt(f):
    """--gateway and --api-key, for every command that talks to a gateway."""
    return _gateway(_api_key(f))
json_opt = click.option("--json", "as_json", is_flag=True, help="print one JSON object (for scripts)")


def _client(gateway: str | None):
    from gpufaas.gateway.client import Client, resolve_api_key, resolve_gateway

    url = resolve_gateway(gateway)
    return Client(url, api_key=resolve_api_key(click.get_current_context().meta.get("gpufaas.api_key"), url))


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout)
    sys.stdout.write("\n")


def _table(title: str, columns: list[str], rows: list[list[str]], con: "Console | None" = None) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    (con or Console()).print(t)


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

    from gpufaas.gateway.app import run
    from gpufaas.gateway.service import resolve_policy_name
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
        raise UserError(startup_error(e, host, port)) from None


def startup_error(e: OSError, host: str, port: int) -> str:
    """The one line `gpufaas up` prints for an OSError at start-up, naming the real cause: the port in use,
    no permission to bind it, an address not on this host, or a file or folder (named) it cannot use."""
    import errno
    import socket

    if e.filename is not None:  # a file operation (data dir, bundles, store folder), not the socket
        return f"{e.filename}: {e.strerror}; check --data-dir (it must be a writable folder)"
    where = f"{host}:{port}"
    if e.errno == errno.EADDRINUSE:
        return f"--port: {where} is already in use (another gateway?); stop it or pick another --port"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"--port: no permission to listen on {where} (ports below 1024 need root); pick a port >= 1024"
    if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(e, socket.gaierror):
        return f"--host: {host} is not an address of this machine ({e.strerror}); use 127.0.0.1 or 0.0.0.0"
    return f"cannot start the gateway on {where}: {e.strerror or e}"


class _DeployBar:
    """A `DeployWatcher` that draws one line per function and workflow (queued, deploying with its elapsed
    time, then the gateway's answer) under a bar of the whole deploy. Thread-safe: rich's Progress locks."""

    def __init__(self, bar: "Progress", items: list[tuple[str, dict, dict[str, str]]]) -> None:
        self.bar = bar
        self.total = bar.add_task("deploy", total=len(items), info="")
        self.tasks = {(kind, spec["name"]): bar.add_task(f"  {kind} {spec['name']}", total=1, info="queued", start=False)
                      for kind, spec, _ in items}

    def started(self, kind: str, name: str) -> None:
        """The item's request went out: its clock starts."""
        t = self.tasks[(kind, name)]
        self.bar.start_task(t)
        self.bar.update(t, info="deploying")

    def finished(self, kind: str, name: str, result: str) -> None:
        """The gateway answered: the item's line shows the answer and stops its clock."""
        t = self.tasks[(kind, name)]
        self.bar.update(t, completed=1, info=result)
        self.bar.stop_task(t)
        self.bar.advance(self.total)


@click.command()
@click.option("-f", "--file", "stack_file", type=click.Path(dir_okay=False), default=None,
              help="stack manifest [default: ./stack.yaml or ./stack.yml]")
@gateway_opt
@json_opt
def deploy(stack_file, gateway, as_json) -> None:
    """Deploy the functions and workflows of a stack manifest (version: "1", ${VAR} substituted).

    On a terminal, a line per function and workflow on stderr shows what is deploying and for how long."""
    from gpufaas.gateway.cli import progress
    from gpufaas.gateway.client import deploy_stack, load_stack

    if stack_file is None:
        found = [p for p in ("stack.yaml", "stack.yml") if Path(p).is_file()]
        if not found:
            raise UserError("-f: no stack.yaml or stack.yml here; name one with -f FILE")
        stack_file = found[0]
    items = load_stack(stack_file)
    client = _client(gateway)
    with progress.make(as_json, counts=False, transient=True) as bar:
        results = deploy_stack(client, items, watcher=_DeployBar(bar, items))
    if as_json:
        _print_json({"deployed": results})
    else:
        _table(f"deployed {stack_file}", ["kind", "name", "result"], [[r["kind"], r["name"], r["result"]] for r in results])


def dag_tree(name: str, slo_ms: float, stages: list[dict]) -> "Tree":
    """A workflow's DAG as a rich Tree: each stage under the predecessor it runs after (entry stages under
    the root), so a fan-out shows as siblings under their parent; a fan-in stage is drawn once, under its
    last predecessor in topological order, says which stages it waits for, and every other predecessor
    gets a `-> stage` leaf pointing at it. `stages` are spec dicts (name, function, after). Pure; `ls` calls it."""
    import networkx as nx
    from rich.markup import escape
    from rich.tree import Tree

    g = nx.DiGraph()
    index = {s["name"]: i for i, s in enumerate(stages)}
    fn = {s["name"]: s["function"] for s in stages}
    for s in stages:
        g.add_node(s["name"])
        for p in s.get("after", []):
            g.add_edge(p, s["name"])
    order = list(nx.lexicographical_topological_sort(g, key=index.__getitem__))  # manifest order among equals
    pos = {n: i for i, n in enumerate(order)}
    root = Tree(f"[bold]{escape(name)}[/]  SLO {slo_ms:g} ms")
    nodes: dict[str, Tree] = {}
    for n in order:
        preds = sorted(g.predecessors(n), key=pos.__getitem__)
        label = f"{escape(n)} [dim]({escape(fn[n])})[/]"
        if len(preds) > 1:
            label += f"  [italic]fan-in: waits for {escape(', '.join(preds))}[/]"
        nodes[n] = (nodes[preds[-1]] if preds else root).add(label)
        for p in preds[:-1]:
            nodes[p].add(f"[dim]-> {escape(n)}[/]")
    return root


@click.command("ls")
@gateway_opt
@json_opt
def ls(gateway, as_json) -> None:
    """List deployed functions and workflows; each workflow's DAG is drawn as a tree (fan-out as siblings)."""
    from rich.console import Console

    c = _client(gateway)
    fns = c.get("/v1/functions")["functions"]
    wfs = c.get("/v1/workflows")["workflows"]
    if as_json:
        _print_json({"functions": fns, "workflows": wfs})
        return
    _table("functions", ["name", "model", "instances", "files"], [[f["name"], f["model"], f["instances"], ", ".join(f["files"])] for f in fns])
    con = Console()
    con.print(f"[italic]workflows[/] ({len(wfs)})" if wfs else "[italic]workflows[/]: none deployed")
    for w in wfs:
        spec = c.get(f"/v1/workflows/{w['name']}")["spec"]
        con.print(dag_tree(w["name"], w["slo_ms"], spec["stages"]))


STATUS_WIDTH = 140  # `status` off a terminal (a pipe, a log): wide enough for a GPU's row


def status_doc(c: "Client") -> dict:
    """The combined status document: the gateway's /v1/cluster, /v1/usage, /v1/functions and /v1/workflows
    under one object. Raises GatewayUnreachable (exit 3) when nothing answers. Called by `gpufaas status`."""
    return {"gateway": c.base, "cluster": c.get("/v1/cluster"), "usage": c.get("/v1/usage"),
            "functions": c.get("/v1/functions")["functions"], "workflows": c.get("/v1/workflows")["workflows"]}


def _by_function_and_state(instances: list[dict]) -> str:
    """`resnet50: 2 idle, 1 busy; preprocess: 1 starting` for one GPU's instances."""
    counts: dict[str, dict[str, int]] = {}
    for i in instances:
        state = "stopping" if i.get("stopping") else i["state"]
        by = counts.setdefault(i["function"], {})
        by[state] = by.get(state, 0) + 1
    return "; ".join(f"{f}: " + ", ".join(f"{n} {st}" for st, n in sorted(by.items())) for f, by in sorted(counts.items())) or "-"


def print_status(doc: dict) -> None:
    """`gpufaas status` for people: a summary line, GPUs (share units and memory used, instances by
    function and state), the non-empty queues, and usage (hit rate, latency, cost)."""
    from rich.console import Console

    con = Console()
    if not con.is_terminal:  # NOTE: rich's width off a terminal is 80: a GPU's row would wrap
        con = Console(width=STATUS_WIDTH)
    cl, us = doc["cluster"], doc["usage"]
    insts = cl["instances"]
    by_gpu: dict[str, list[dict]] = {}
    for i in insts:
        by_gpu.setdefault(i["gpu"], []).append(i)
    con.print(f"[bold]{doc['gateway']}[/]: policy {cl['policy']}, backend {cl['backend']} ({cl['execute']}); "
              f"{len(cl['gpus'])} GPUs, {len(insts)} instances, {len(doc['functions'])} functions, "
              f"{len(doc['workflows'])} workflows; {cl['inflight']} invocations in flight", highlight=False, soft_wrap=True)
    _table("GPUs", ["gpu", "node", "type", "share units used", "memory MB used", "instances by function and state"],
           [[g["id"], g["node"], g["type"], f"{g['share_units'] - g['free_units']}/{g['share_units']}",
             f"{g['memory_mb'] - g['free_mb']:.0f}/{g['memory_mb']:.0f}", _by_function_and_state(by_gpu.get(g["id"], []))]
            for g in cl["gpus"]], con)
    queued = [q for q in cl["queues"] if q["length"] > 0]
    if queued:
        _table(f"queues ({len(queued)} of {len(cl['queues'])} hold jobs)", ["workflow", "stage", "function", "queued", "arrivals/s"],
               [[q["workflow"], q["stage"], q["function"], q["length"], f"{q['rate_per_s']:g}"] for q in queued], con)
    else:
        con.print(f"queues: all {len(cl['queues'])} empty", highlight=False)
    cost, lat = us["cost"], us["latency_ms"]
    _table("usage", ["invocations", "completed", "failed", "rejected", "timed out", "SLO hit", "p50 ms", "p99 ms",
                     "allocated $", "busy $", "cold starts"],
           [[us["invocations"], us["completed"], us["failed"], us["rejected"], us["timed_out"], f"{us['slo_hit_rate']:.3f}",
             f"{lat['p50']:.1f}", f"{lat['p99']:.1f}", f"{cost['allocated_usd']:.6f}", f"{cost['busy_usd']:.6f}", us["cold_starts"]]], con)


@click.command()
@gateway_opt
@json_opt
def status(gateway, as_json) -> None:
    """Cluster, instances, queues and usage of a running gateway at a glance (exit 3 if none answers).

    \b
    Per GPU: share units and memory in use, and its instances by function and state; then the
    non-empty queues and the usage so far. --json prints the gateway's /v1/cluster, /v1/usage,
    /v1/functions and /v1/workflows documents combined in one object."""
    doc = status_doc(_client(gateway))
    if as_json:
        _print_json(doc)
    else:
        print_status(doc)


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


COMMANDS = [up, deploy, ls, status, describe, rm, invoke]
