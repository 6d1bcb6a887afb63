"""`keelnet agent`: hold this host's userspace data planes and serve the other commands."""

from __future__ import annotations

import argparse

from keelnet.cli._common import Commands, Handler, error
from keelnet.host import Host


def add_commands(commands: Commands) -> None:
    agent = commands.add_parser(
        "agent",
        help="hold this host's userspace data planes (and, with --store, its cluster "
        "membership) and serve keelnet commands",
    )
    agent.add_argument(
        "--dataplane",
        choices=("kernel", "userspace"),
        help="what this host runs for overlay networks created with dataplane=auto",
    )
    agent.set_defaults(standalone=run_agent)


def run_agent(args: argparse.Namespace) -> int:
    from keelnet import agent

    return agent.serve(args, run_forwarded)


def forwardable(args: argparse.Namespace) -> bool:
    """Whether the agent may run this command for the caller."""
    return getattr(args, "handler", None) is not None and not getattr(args, "local_only", False)


def run_forwarded(host: Host, argv: list[str]) -> int:
    """One forwarded command, run against the agent's Host."""
    from keelnet.cli import build_parser, run_handler

    args = build_parser().parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None or not forwardable(args):
        error("the agent runs network, sandbox and port commands only")
        return 2
    return run_handler(handler, host, args)
