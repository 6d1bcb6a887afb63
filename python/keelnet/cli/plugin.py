"""`keelnet plugin`: serve Docker as its network and IPAM plugin."""

from __future__ import annotations

import argparse
from pathlib import Path

from keelnet.cli._common import Commands, error
from keelnet.cli.agent import _dataplane_flag
from keelnet.errors import KeelnetError


def add_commands(commands: Commands) -> None:
    plugin = commands.add_parser(
        "plugin",
        help="serve Docker as its network and IPAM driver (docker network create -d keelnet)",
        description=(
            "Serve keelnet's drivers and IPAM to dockerd on /run/docker/plugins/NAME.sock "
            "(docker network create -d NAME [-o keelnet.driver=bridge|macvlan|ipvlan|overlay] "
            "[--ipam-driver NAME]), as the agent of the host's store (serving keelnet's own "
            "commands too), until SIGTERM, SIGINT or `keelnet agent stop`. State lives in "
            "the state directory: restart it any time. Overlay networks need --store: the "
            "plugin's host then is a member of that cluster."
        ),
    )
    plugin.add_argument(
        "--name", default="keelnet", help="the plugin's name for docker (default: keelnet)"
    )
    plugin.add_argument(
        "--socket", type=Path, help="serve on this socket, not /run/docker/plugins/NAME.sock"
    )
    plugin.add_argument(
        "--record", type=Path, help="append each request and answer to this file (JSON lines)"
    )
    plugin.add_argument(
        "--store",
        default=argparse.SUPPRESS,  # else keelnet's own --store, given before `plugin`
        help="cluster store of overlay networks: etcd://HOST:PORT[,HOST:PORT...]",
    )
    _dataplane_flag(plugin)
    plugin.set_defaults(standalone=run_plugin)


def run_plugin(args: argparse.Namespace) -> int:
    from keelnet.cli.agent import run_forwarded
    from keelnet.plugin.server import run

    try:
        return run(
            args.name,
            netns=args.netns,
            state_dir=args.state_dir,
            path=args.socket,
            record=args.record,
            commands=run_forwarded,
            store=args.store,
            dataplane=args.dataplane,
        )
    except KeelnetError as exc:
        error(exc)
        return 1
    except PermissionError as exc:
        error(f"permission denied: {exc.filename or exc} (keelnet plugin needs root)")
        return 1
