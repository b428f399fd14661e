"""``closedloop sweep``: the command group. Its commands (:mod:`closedloop.sweep.commands`) load
only when asked for, so the rest of the command line starts without torch and Ray."""

from __future__ import annotations

import click

KINDS = ("efficiency", "hypotheses", "replay")


class _Sweeps(click.Group):
    """The sweep commands, imported when one is asked for (as ``closedloop bench``'s harnesses)."""

    def list_commands(self, ctx):
        return list(KINDS)

    def get_command(self, ctx, name):
        if name not in KINDS:
            return None
        from closedloop.sweep.commands import sweep_commands

        return sweep_commands(ctx.find_root().command)[name]


@click.group("sweep", cls=_Sweeps)
def sweep() -> None:
    """Grids of strategies x twins x seeds x settings as Ray tasks, on this machine or a cluster.

    Each command takes its bench's (or replay's) options, with lists where the grid has an axis:
    --strategies, --seeds N and any number of --vary KEY=V1,V2 (settings, checked by the real spec
    before anything runs). It writes OUT/results.json (a record per cell: inputs, outputs,
    provenance, status), prints a table and draws OUT/sweep.png; a rerun skips the finished cells
    and retries the failed ones.
    """
