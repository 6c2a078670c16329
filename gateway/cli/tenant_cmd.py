"""`gpufaas tenant create|ls|set|rm` (the admin key) and `gpufaas usage [--tenant T]`.

A new tenant's API key is printed once, by `create`; the gateway keeps only its hash. Give it to the
tenant, who sends it with `--api-key` or `$GPUFAAS_API_KEY`.
"""

from __future__ import annotations

import click

from gpufaas.gateway.cli.gateway_cmds import _client, _print_json, gateway_opt, json_opt

_LIMITS = (
    click.option("--weight", type=float, default=None, help="fair-share weight under contention [default: 1]"),
    click.option("--max-share-units", type=int, default=None, help="GPU share units its instances may hold [default: no limit]"),
    click.option("--max-concurrency", type=int, default=None, help="invocations in flight at once [default: no limit]"),
    click.option("--rate-rps", type=float, default=None, help="invocations admitted per second [default: no limit]"),
)


def _limit_options(f):
    for opt in reversed(_LIMITS):
        f = opt(f)
    return f


def _given(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


@click.group()
def tenant() -> None:
    """Tenants and their API keys (needs the admin key)."""


@tenant.command("create")
@click.argument("name")
@_limit_options
@gateway_opt
@json_opt
def create(name, weight, max_share_units, max_concurrency, rate_rps, gateway, as_json) -> None:
    """Create tenant NAME and print its API key (shown only this once)."""
    doc = _client(gateway).request("POST", "/v1/tenants", {"name": name, **_given(weight=weight, max_share_units=max_share_units,
                                                                                  max_concurrency=max_concurrency, rate_rps=rate_rps)})[1]
    if as_json:
        _print_json({"name": doc["name"], "api_key": doc["api_key"]})
        return
    click.echo(f"tenant {doc['name']} created; its API key (shown once, keep it):\n{doc['api_key']}")


@tenant.command("ls")
@gateway_opt
@json_opt
def ls(gateway, as_json) -> None:
    """List the tenants with their weights and quotas."""
    doc = _client(gateway).get("/v1/tenants")
    if as_json:
        _print_json(doc)
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(box=None)
    for col in ("tenant", "admin", "weight", "max share units", "max concurrency", "rate rps"):
        t.add_column(col)
    for row in doc["tenants"]:
        t.add_row(row["name"], "yes" if row["admin"] else "", f"{row['weight']:g}",
                  *("-" if row[k] is None else f"{row[k]:g}" for k in ("max_share_units", "max_concurrency", "rate_rps")))
    Console().print(t)


@tenant.command("set")
@click.argument("name")
@_limit_options
@gateway_opt
@json_opt
def set_(name, weight, max_share_units, max_concurrency, rate_rps, gateway, as_json) -> None:
    """Change tenant NAME's weight or quotas (the ones given)."""
    body = _given(weight=weight, max_share_units=max_share_units, max_concurrency=max_concurrency, rate_rps=rate_rps)
    if not body:
        raise click.UsageError("give at least one of --weight, --max-share-units, --max-concurrency, --rate-rps")
    doc = _client(gateway).request("PATCH", f"/v1/tenants/{name}", body)[1]
    _print_json(doc) if as_json else click.echo(f"tenant {name}: " + ", ".join(f"{k} {v}" for k, v in doc.items() if k != "name"))


@tenant.command("rm")
@click.argument("name")
@gateway_opt
def rm(name, gateway) -> None:
    """Remove tenant NAME (it must own no functions or workflows)."""
    _client(gateway).request("DELETE", f"/v1/tenants/{name}")
    click.echo(f"tenant {name} removed")


@click.command()
@click.option("--tenant", "of", default=None, metavar="NAME", help="the admin: this tenant's usage [default: the key's own, or everything]")
@gateway_opt
@json_opt
def usage(of, gateway, as_json) -> None:
    """Invocations, SLO hit rate and cost so far, per workflow, of your tenant."""
    doc = _client(gateway).get("/v1/usage" + (f"?tenant={of}" if of else ""))
    if as_json:
        _print_json(doc)
        return
    cost = doc.get("cost") or {}
    who = doc.get("tenant", "the whole gateway")
    click.echo(f"usage of {who}: {doc.get('invocations', 0)} invocations, SLO hit rate {doc.get('slo_hit_rate', 0):.3f}"
               + (f", allocated ${cost['allocated_usd']:.4f}, busy ${cost['busy_usd']:.4f}" if "allocated_usd" in cost else ""))
    for wf, v in sorted(doc.get("per_workflow", {}).items()):
        click.echo(f"  {wf}: {v['invocations']} invocations, SLO hit rate {v['slo_hit_rate']:.3f}")


COMMANDS = (tenant, usage)
