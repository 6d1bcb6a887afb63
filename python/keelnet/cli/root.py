"""The root command: global flags, the nouns, and where a command runs.

A command runs in the agent when one serves this host (the agent owns the userspace data
planes); a command that changes a host whose networks need the agent starts it first.
Commands that only read the store run on the store alone when no agent runs; nothing
imports pyroute2 or the drivers until a command needs a Host.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Callable

from keelnet.agent import AgentError
from keelnet.cli import CommandLine, forward
from keelnet.cli._common import (
    LOCAL,
    READ,
    WRITE,
    Session,
    describe,
    error,
    missing_privileges,
)

#: The nouns, each a module `keelnet.cli.<noun>` with `add_commands`: imported only when
#: its commands are parsed (a command line names one noun).
NOUNS = ("network", "sandbox", "port", "agent", "plugin", "system")
#: Flags that take Go's `--flag=false` as well as `--flag` (rewritten before parsing).
BOOL_FLAGS = ("--ipv4", "--ipv6", "--internal", "--attachable")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or (`only`) the global flags and one noun's commands:
    building every parser costs more than running a command the agent answers."""
    parser = argparse.ArgumentParser(
        prog="keelnet", description="Docker-style container networking, one host at a time"
    )
    parser.add_argument("--version", action=_Version, help="Print version information and quit")
    parser.add_argument(
        "--netns", help="work on this network namespace as the host (default: this one)"
    )
    parser.add_argument(
        "--state-dir",
        help="state directory (default: $KEELNET_STATE_DIR or /var/lib/keelnet/<netns>)",
    )
    parser.add_argument(
        "--store",
        help="cluster store for global (overlay) networks: etcd://HOST:PORT[,HOST:PORT...] "
        "(default: $KEELNET_STORE; none: everything stays local)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for noun in NOUNS:
        if only in (None, noun):
            importlib.import_module(f"keelnet.cli.{noun}").add_commands(commands)
    demo = commands.add_parser(
        "demo",
        help="Build networks in throwaway namespaces, check them, show IPAM at work",
        description="Build networks in throwaway namespaces, check them, show IPAM at work",
    )
    demo.set_defaults(standalone=run_demo)
    return parser


class _Version(argparse.Action):
    """--version without loading the Rust extension until it is asked for."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        import keelnet

        parser.exit(message=f"keelnet {keelnet.__version__}\n")


def run_demo(args: argparse.Namespace) -> int:
    """Networks (real namespaces, removed afterwards), then IPAM."""
    from keelnet.demo import run_network_demo
    from keelnet.demo_overlay import run_overlay_demo
    from keelnet.ipam_demo import run_ipam_demo

    status = run_network_demo()
    print()
    status |= run_overlay_demo()
    print()
    run_ipam_demo()
    return status


def run(argv: list[str]) -> int:
    """Run one command line; every error ends as one line on stderr."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("KEELNET_DEBUG"):
            raise
        error(describe(exc))
        return 1


_GO_BOOL = re.compile(r"^(--[a-z0-9-]+)=(true|false|1|0)$", re.I)


def _go_bools(argv: list[str]) -> list[str]:
    """Docker's `--ipv6=false` as argparse's `--no-ipv6`."""
    result = []
    for token in argv:
        match = _GO_BOOL.match(token)
        if match and match.group(1) in BOOL_FLAGS:
            on = match.group(2).lower() in ("true", "1")
            token = match.group(1) if on else "--no-" + match.group(1)[2:]
        result.append(token)
    return result


def parse(argv: list[str], parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """The command line parsed (by `parser`, else one built for the noun it names)."""
    argv = _go_bools(argv)
    if parser is None:
        line = CommandLine(argv)
        known = not line.parsed_here and line.noun in NOUNS
        parser = build_parser(only=line.noun if known else None)  # else: all, for help
    return parser.parse_args(argv)


def _main(argv: list[str]) -> int:
    args = parse(argv)
    if args.command is None:
        build_parser().print_help()
        return 0
    if getattr(args, "handler", None) is None and getattr(args, "standalone", None) is None:
        args.noun_help()  # a noun without a verb: its help, as `docker network` prints
        return 0
    problem = missing_privileges()
    if problem is not None:
        error(problem)
        return 1
    standalone: Callable[[argparse.Namespace], int] | None = getattr(args, "standalone", None)
    if standalone is not None:
        return standalone(args)
    access: str = args.access
    confirm: str | None = getattr(args, "confirm", None)
    if confirm and not args.force:
        if not _confirmed(confirm):
            return 0
        args.force = True
        argv = [*argv, "--force"]
    if access in (READ, WRITE):
        answer = _forward(args, argv)
        if answer is not None:
            return answer
    session = Session(args.netns, args.state_dir, cluster_store=args.store)
    try:
        agent_runs = access in (WRITE, LOCAL) and _ensure_agent(session)
        if agent_runs and access == WRITE:
            answer = _forward(args, argv)
            if answer is None:
                raise AgentError("the keelnet agent stopped answering; see its log")
            return answer
        status = run_handler(session, args)
    finally:
        session.close()
    if access == WRITE and status == 0:
        # A network just made may need the agent: it takes the plane over from this
        # process (gone with it), so it starts after this process let go of the host.
        after = Session(args.netns, args.state_dir, cluster_store=args.store)
        try:
            _ensure_agent(after)
        finally:
            after.close()
    return status


def _forward(args: argparse.Namespace, argv: list[str]) -> int | None:
    return forward(args.netns, args.state_dir, argv)


def _ensure_agent(session: Session) -> bool:
    """Make sure the agent runs when a network of this host needs it (True then); the
    command that starts it says so once on stderr."""
    from keelnet import agent as agents
    from keelnet.errors import StoreUnavailable

    try:
        networks = session.networks()
    except StoreUnavailable:  # global networks unknown: the command itself will say so
        networks = session.store.networks()
    for found in networks:
        reason = agents.needs_agent(found)
        if reason is None:
            continue
        if agents.ensure_running(
            session.netns, session.state_dir, reason, store=session.cluster_store
        ):
            print(
                f"keelnet: started the keelnet agent for this host (network {found.name}: "
                f"{reason}); log: {session.agent_log()}",
                file=sys.stderr,
            )
        return True
    return False


def _confirmed(prompt: str) -> bool:
    sys.stdout.write(prompt)
    sys.stdout.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def run_handler(session: Session, args: argparse.Namespace) -> int:
    """Run the command's handler; any error becomes one line on stderr and exit code 1."""
    try:
        return int(args.handler(session, args))
    except Exception as exc:
        if os.environ.get("KEELNET_DEBUG"):
            raise
        error(describe(exc))
        return 1
