"""The `keelnet` command line: Docker's verbs and flags.

One module per noun (`network`, `sandbox`, `port`, `agent`), as Docker's CLI keeps
`cli/command/network/*.go`; each adds its verbs to the parser with `add_commands`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import keelnet
from keelnet.cli import agent, network, port, sandbox
from keelnet.cli._common import Handler, error
from keelnet.errors import KeelnetError
from keelnet.host import Host


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keelnet", description="keelnet: Docker-style container networking"
    )
    parser.add_argument("--version", action="version", version=f"keelnet {keelnet.__version__}")
    parser.add_argument("--netns", help="work inside this network namespace as the host")
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
    network.add_commands(commands)
    sandbox.add_commands(commands)
    port.add_commands(commands)
    demo = commands.add_parser(
        "demo", help="build networks in throwaway namespaces, check them, show IPAM at work"
    )
    demo.set_defaults(standalone=run_demo)
    agent.add_commands(commands)
    return parser


def run_demo(args: argparse.Namespace) -> int:
    """Networks (root: real namespaces, removed afterwards), then IPAM."""
    from keelnet.demo import run_network_demo
    from keelnet.demo_overlay import run_overlay_demo
    from keelnet.ipam_demo import run_ipam_demo

    status = run_network_demo()
    print()
    status |= run_overlay_demo()
    print()
    run_ipam_demo()
    return status


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    standalone: Callable[[argparse.Namespace], int] | None = getattr(args, "standalone", None)
    if standalone is not None:
        try:
            return standalone(args)
        except KeelnetError as exc:  # e.g. an agent whose cluster store is unreachable
            error(exc)
            return 1
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    if agent.forwardable(args):
        from keelnet import agent as agent_server

        answer = agent_server.forward(
            args.netns, args.state_dir, list(sys.argv[1:] if argv is None else argv)
        )
        if answer is not None:
            status, out, err = answer
            sys.stdout.write(out)
            sys.stderr.write(err)
            return status
    try:
        # Not a cluster member: a command that needs one (an overlay connect) is refused
        # with a pointer to `keelnet agent`, which is.
        with Host(
            netns=args.netns, state_dir=args.state_dir, store=args.store, member=False
        ) as host:
            return run_handler(handler, host, args)
    except KeelnetError as exc:
        error(exc)
        return 1
    except PermissionError as exc:
        error(f"permission denied: {exc.filename or exc} (keelnet needs root)")
        return 1


def run_handler(handler: Handler, host: Host, args: argparse.Namespace) -> int:
    try:
        return handler(host, args)
    except KeelnetError as exc:
        error(exc)
        return 1


__all__ = ["build_parser", "main", "run_handler"]
