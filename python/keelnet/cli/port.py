"""`keelnet port ...`: sandbox ports published on the host (Docker's `-p`)."""

from __future__ import annotations

import argparse

from keelnet.cli._common import READ, WRITE, Commands, Session, command, format_flag, print_rows
from keelnet.errors import InvalidRequest

LS_COLUMNS = "{{.Sandbox}}\t{{.ContainerPort}}/{{.Proto}}\t{{.HostIp}}:{{.HostPort}}\t{{.Network}}"
LS_HEADERS = {
    "Sandbox": "SANDBOX",
    "ContainerPort": "PORT",
    "Proto": "PROTO",
    "HostIp": "HOST IP",
    "HostPort": "HOST PORT",
    "Network": "NETWORK",
}


def add_commands(commands: Commands) -> None:
    port = commands.add_parser(
        "port",
        help="Publish sandbox ports on the host",
        description="Publish sandbox ports on the host",
    )
    port.set_defaults(noun_help=port.print_help)  # `keelnet port` alone: its help
    verbs = port.add_subparsers(dest="verb", metavar="COMMAND")
    for verb, handler, what in (
        ("publish", publish_port, "Publish a sandbox port on the host"),
        ("unpublish", unpublish_port, "Remove a published port"),
    ):
        parser = command(verbs, verb, what, handler, WRITE)
        parser.add_argument("network", metavar="NETWORK", help="network name or id")
        parser.add_argument("sandbox", metavar="SANDBOX", help="sandbox name")
        parser.add_argument(
            "mapping",
            metavar="[HOST_IP:]HOST_PORT:PORT[/PROTO]",
            help="as docker run -p (PORT alone: an ephemeral host port)",
        )
    ls = command(verbs, "ls", "List published ports", list_ports, READ, aliases=["list"])
    format_flag(ls)


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


def publish_port(session: Session, args: argparse.Namespace) -> int:
    host_ip, host_port, container_port, proto = parse_mapping(args.mapping)
    mapping = session.host.publish(
        args.network, args.sandbox, host_port, container_port, proto, host_ip
    )
    print(f"{container_port}/{proto} -> {mapping.host_ip or '0.0.0.0'}:{mapping.host_port}")
    return 0


def unpublish_port(session: Session, args: argparse.Namespace) -> int:
    host_ip, host_port, _, proto = parse_mapping(args.mapping)
    session.host.unpublish(args.network, args.sandbox, host_port, proto, host_ip)
    return 0


class PortRow:
    go_type = "*port.portContext"

    def __init__(self, **fields: object) -> None:
        self._fields = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def to_json(self) -> dict[str, object]:
        return self._fields


def list_ports(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    networks = {n.id: n.name for n in store.networks()}
    rows = [
        PortRow(
            Network=networks[p.network_id],
            Sandbox=p.sandbox,
            HostIp=p.host_ip or "0.0.0.0",
            HostPort=p.host_port,
            ContainerPort=p.container_port,
            Proto=p.proto,
        )
        for p in store.ports()
    ]
    print_rows(args.format, LS_COLUMNS, rows, LS_HEADERS)
    return 0
