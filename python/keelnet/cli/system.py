"""`keelnet system ...`: upkeep of the whole host, as Docker's `system` noun holds what is
about the daemon and everything it manages rather than one kind of object.

`system reconcile` makes the kernel match the store on demand, what a Host does by
itself when it opens and finds reason to (a crash journal entry, a reboot, a sandbox
gone): it removes the store's leftovers, links marked as this store's that nothing it
holds accounts for, never another store's, and drops or makes again what the kernel lost.
"""

from __future__ import annotations

import argparse

from keelnet.cli._common import WRITE, Commands, Session, command

#: What each count of `Host.reconcile()` stands for, in the order printed.
RECONCILED = {
    "links": "leaked interfaces removed from the host's namespace",
    "sandbox_links": "leaked interfaces removed from sandboxes",
    "namespaces": "leaked namespaces removed",
    "sandboxes": "sandboxes forgotten (their namespace was gone)",
    "endpoints": "endpoints dropped (their interface or sandbox was gone)",
    "recreated": "network devices and endpoints made again",
}


def add_commands(commands: Commands) -> None:
    system = commands.add_parser(
        "system", help="Manage keelnet on this host", description="Manage keelnet on this host"
    )
    system.set_defaults(noun_help=system.print_help)
    verbs = system.add_subparsers(dest="verb", metavar="COMMAND")
    command(
        verbs,
        "reconcile",
        "Make the kernel match the store now: remove this store's leftovers (never another "
        "store's), drop or make again what the kernel lost; print what was done",
        reconcile,
        WRITE,
    )


def reconcile(session: Session, args: argparse.Namespace) -> int:
    done = session.host.reconcile()
    if not session.in_agent:
        # A Host this command opened may have reconciled already, before being asked.
        for key, count in session.host.reconciled_at_open.items():
            done[key] = done.get(key, 0) + count
    print(report(done))
    return 0


def report(done: dict[str, int]) -> str:
    """One line per kind of repair made, or that the kernel already matched the store."""
    lines = [f"{what}: {done[key]}" for key, what in RECONCILED.items() if done.get(key)]
    lines += [f"{key}: {count}" for key, count in done.items() if count and key not in RECONCILED]
    return "\n".join(lines) or "nothing to do: the kernel matches the store"
