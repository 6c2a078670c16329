"""`gpufaas ui`: print the live dashboard's login address (`/ui?token=KEY`) and open it in a browser.

Who calls it: people, from a shell. What it changes: nothing on the gateway but one check (GET /ui/state
with the key, so a wrong or tenant key fails here with one line instead of in the browser).
"""

from __future__ import annotations

import urllib.parse
import webbrowser

import click

from gpufaas.gateway.cli.gateway_cmds import _client, gateway_opt
from gpufaas.gateway.client import GatewayError
from gpufaas.platform.errors import UserError


def login_url(base_url: str, key: str) -> str:
    """The address that logs a browser into the dashboard of the gateway at `base_url` with `key`."""
    return f"{base_url}/ui?token={urllib.parse.quote(key, safe='')}"


@click.command("ui")
@gateway_opt
@click.option("--no-open", is_flag=True, help="print the address only; do not start a browser")
def ui(gateway, no_open) -> None:
    """Open the gateway's live dashboard (GPUs, instances, queues, SLO hit, cost, decisions).

    \b
    Prints the login address /ui?token=KEY; the browser trades the key for a session cookie and the
    address bar drops it. The dashboard takes the admin key only (exit 2 for another key, 3 when no
    gateway answers). Without a browser here (or with --no-open), open the printed address yourself.
    """
    c = _client(gateway)
    if not c.api_key:
        raise UserError("the dashboard needs the gateway's admin key: pass --api-key, set $GPUFAAS_API_KEY, "
                        "or run this on the gateway's machine (<data-dir>/admin.key)")
    status, doc = c.request("GET", "/ui/state", accept_error=True)
    if status == 403:
        raise GatewayError(403, "forbidden", "the dashboard is for the admin key only; this is a tenant's key "
                                             "(the admin key is in the gateway's <data-dir>/admin.key)")
    if status != 200:
        err = doc.get("error", {}) if isinstance(doc, dict) else {}
        raise GatewayError(status, err.get("code", "http_error"), err.get("message", "the dashboard did not answer"))
    url = login_url(c.base, c.api_key)
    click.echo(url)
    if no_open:
        return
    # NOTE: webbrowser.open answers False when it finds no browser (a server without a desktop): not an error,
    # the address is printed above.
    if not webbrowser.open(url):
        click.echo("no browser found here; open the address above", err=True)


COMMANDS = [ui]
