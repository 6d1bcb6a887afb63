"""`keelnet agent ...`: the host's daemon that holds userspace data planes and serves the
other commands (`run` in the foreground, as systemd runs it; `start`, `status`, `stop`)."""

from __future__ import annotations

import argparse
import sys

from keelnet.cli._common import Commands, Session, error

TYPE_CHECKING = False  # not typing's: the CLI does not import typing
if TYPE_CHECKING:
    from keelnet.host import Host


def add_commands(commands: Commands) -> None:
    agent = commands.add_parser(
        "agent",
        help="Manage the keelnet agent (holds userspace data planes, serves commands)",
        description="The keelnet agent holds this host's userspace data planes and serves the "
        "other commands; commands that need it start it. Without a command: run it here.",
    )
    agent.set_defaults(standalone=run_agent)
    _dataplane_flag(agent)
    verbs = agent.add_subparsers(dest="agent_verb", metavar="COMMAND")
    run = verbs.add_parser(
        "run", help="Run the agent in the foreground (as systemd does)", description="Run"
    )
    run.set_defaults(standalone=run_agent)
    _dataplane_flag(run)
    verbs.add_parser(
        "start", help="Start the agent in the background unless it runs", description="Start"
    ).set_defaults(standalone=start_agent)
    verbs.add_parser(
        "status", help="Say whether the agent runs and what it serves", description="Status"
    ).set_defaults(standalone=agent_status)
    verbs.add_parser(
        "stop", help="Stop the agent (its userspace data planes stop too)", description="Stop"
    ).set_defaults(standalone=stop_agent)


def _dataplane_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataplane",
        choices=("kernel", "userspace"),
        help="what this host runs for overlay networks created with dataplane=auto",
    )


def run_agent(args: argparse.Namespace) -> int:
    from keelnet import agent

    return agent.serve(
        args.netns,
        args.state_dir,
        run_forwarded,
        store=args.store,
        dataplane=getattr(args, "dataplane", None),
    )


def start_agent(args: argparse.Namespace) -> int:
    from keelnet import agent

    if agent.ensure_running(args.netns, args.state_dir, "asked to", store=args.store):
        print("keelnet agent started")
    else:
        print("keelnet agent is already running")
    return 0


def agent_status(args: argparse.Namespace) -> int:
    from keelnet import agent

    found = agent.status(args.netns, args.state_dir)
    print(found.describe())
    return 0 if found.running else 1


def stop_agent(args: argparse.Namespace) -> int:
    from keelnet import agent

    before = agent.stop(args.netns, args.state_dir)
    if before is None:
        print("keelnet agent is not running")
        return 0
    print("keelnet agent stopped")
    if before.planes:
        print(
            f"keelnet: the userspace data planes of {', '.join(before.planes)} stopped with it; "
            "the next command that changes this host starts the agent again",
            file=sys.stderr,
        )
    return 0


_parser: argparse.ArgumentParser | None = None  # the agent builds it once


def run_forwarded(host: Host, argv: list[str]) -> int:
    """One command a CLI process sent, run against the agent's Host."""
    from keelnet.cli.root import build_parser, parse, run_handler

    global _parser
    if _parser is None:
        _parser = build_parser()
    args = parse(argv, _parser)
    if getattr(args, "handler", None) is None or getattr(args, "access", None) == "local":
        error("the agent runs network, sandbox, port and system commands only")
        return 2
    return run_handler(Session(args.netns, args.state_dir, host=host), args)
