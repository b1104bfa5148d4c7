"""The ``ccci`` command (INTERFACES "CLI"); exit codes and settings: see ``app``.

``app`` holds the group, the exit codes and what every command shares; the commands are in
``submit`` (enqueue a run, follow it), ``reading`` (status, runs, canonical, enrolled,
alerts) and ``operations`` (prune, realms, check, bridge); ``output`` formats a run.
"""

from __future__ import annotations

import sys

import click

from ccci_tasks import constants as c
from ccci_tasks.cli import operations, reading, submit  # noqa: F401  (register the commands)
from ccci_tasks.cli.app import Exit, main


def run(argv: list[str] | None = None) -> int:
    """Run the CLI; return its exit code."""
    try:
        returned = main.main(args=argv, prog_name="ccci", standalone_mode=False)
    except Exit as done:
        return done.code
    except click.exceptions.Abort:
        click.echo("ccci: aborted", err=True)
        return c.EXIT_INFRA
    except click.UsageError as exc:
        exc.show()
        return c.EXIT_USAGE
    except click.ClickException as exc:
        exc.show()
        return c.EXIT_USAGE
    return returned if isinstance(returned, int) else c.EXIT_OK


def entry() -> None:
    """The console script."""
    sys.exit(run())
