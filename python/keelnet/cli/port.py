"""`keelnet port ...`: sandbox ports published on the host (Docker's `-p`)."""

from __future__ import annotations

import argparse
import json

from keelnet.cli._common import Commands, format_flag
from keelnet.errors import InvalidRequest
from keelnet.host import Host


def add_commands(commands: Commands) -> None:
    port = commands.add_parser("port", help="publish sandbox ports on the host")
    verbs = port.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, handler in (("publish", publish_port), ("unpublish", unpublish_port)):
        command = verbs.add_parser(verb, help=f"{verb} a port")
        command.add_argument("network")
        command.add_argument("sandbox")
        command.add_argument("mapping", metavar="[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]")
        command.set_defaults(handler=handler)
    ls = verbs.add_parser("ls", help="list published ports")
    format_flag(ls)
    ls.set_defaults(handler=list_ports)


def parse_mapping(text: str) -> tuple[str | None, int, int, str]:
    """Docker's `-p` syntax: [host_ip:]host_port:container_port[/proto]."""
    spec, _, proto = text.partition("/")
    parts = spec.rsplit(":", 2)
    try:
        if len(parts) == 3:
            return parts[0] or None, int(parts[1]), int(parts[2]), proto or "tcp"
        if len(parts) == 2:
            return None, int(parts[0]), int(parts[1]), proto or "tcp"
        if len(parts) == 1:  # `80`: an ephemeral host port, like docker -p
            return None, 0, int(parts[0]), proto or "tcp"
    except ValueError:
        pass
    raise InvalidRequest(f"invalid port mapping {text!r}: use [HOST_IP:]HOST_PORT:PORT[/PROTO]")


def publish_port(host: Host, args: argparse.Namespace) -> int:
    host_ip, host_port, container_port, proto = parse_mapping(args.mapping)
    mapping = host.publish(args.network, args.sandbox, host_port, container_port, proto, host_ip)
    print(f"{container_port}/{proto} -> {mapping.host_ip or '0.0.0.0'}:{mapping.host_port}")
    return 0


def unpublish_port(host: Host, args: argparse.Namespace) -> int:
    host_ip, host_port, _, proto = parse_mapping(args.mapping)
    host.unpublish(args.network, args.sandbox, host_port, proto, host_ip)
    return 0


def list_ports(host: Host, args: argparse.Namespace) -> int:
    networks = {n.id: n.name for n in host.networks()}
    rows = [
        {
            "Network": networks[p.network_id],
            "Sandbox": p.sandbox,
            "HostIp": p.host_ip or "0.0.0.0",
            "HostPort": p.host_port,
            "ContainerPort": p.container_port,
            "Proto": p.proto,
        }
        for p in host.ports()
    ]
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    for row in rows:
        print(
            f"{row['Sandbox']} {row['ContainerPort']}/{row['Proto']} -> "
            f"{row['HostIp']}:{row['HostPort']} ({row['Network']})"
        )
    return 0
