"""The `gpufaas` command line: one module per verb (`sim.py`, `bench.py`, ...), registered here.

`main()` turns every `UserError` into `error: ...` on stderr (one line; a spec that fails validation in
several places gets one line per error) with exit code 2 and no traceback; click's usage errors also exit 2.
"""

from __future__ import annotations

import sys

import click

from gpufaas.platform.errors import UserError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="gpufaas")
def cli() -> None:
    """gpufaas: serverless DNN workflows on shared GPUs, live or simulated.

    \b
    Simulate a scenario:   gpufaas sim --scenario video --policy esg,batch1-wholegpu
    Policy parameters:     gpufaas policies
    Benchmarks:            gpufaas bench all
    """


def _register() -> None:
    """Add every verb; this file is the one place that names them."""
    from gpufaas.gateway.cli import bench, fidelity_cmd, gateway_cmds, loadgen_cmd, profile_cmd, sim, tenant_cmd, ui_cmd
    from gpufaas.loadgen import results

    cli.add_command(sim.sim)
    cli.add_command(sim.policies)
    cli.add_command(results.COMMAND)
    bench.register_all()
    cli.add_command(bench.bench)
    for mod in (gateway_cmds, loadgen_cmd, profile_cmd, tenant_cmd, ui_cmd, fidelity_cmd):
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `gpufaas` console script."""
    _register()
    try:
        cli.main(args=argv, prog_name="gpufaas", standalone_mode=False)
    except UserError as e:
        for line in str(e).splitlines() or [""]:  # a spec with several errors: one line each
            click.echo(f"error: {line}", err=True)
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
