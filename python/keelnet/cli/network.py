"""`keelnet network ...`: Docker's network verbs."""

from __future__ import annotations

import argparse
import json

from keelnet.cli._common import Commands, error, format_flag, labels, pairs, print_json
from keelnet.errors import InvalidRequest, KeelnetError, NetworkNotFound
from keelnet.host import Host


def add_commands(commands: Commands) -> None:
    network = commands.add_parser("network", help="manage networks")
    verbs = network.add_subparsers(dest="verb", metavar="VERB", required=True)

    create = verbs.add_parser("create", help="create a network")
    create.add_argument("name")
    create.add_argument("-d", "--driver", default="bridge")
    create.add_argument("--subnet", action="append")
    create.add_argument("--gateway", action="append")
    create.add_argument("--ip-range", action="append")
    create.add_argument("--aux-address", action="append", metavar="NAME=IP")
    create.add_argument("-o", "--opt", action="append", metavar="KEY=VALUE")
    create.add_argument("--internal", action="store_true")
    create.add_argument("--ipv6", action="store_true")
    create.add_argument("--label", action="append", metavar="KEY=VALUE")
    create.set_defaults(handler=create_network)

    ls = verbs.add_parser("ls", help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="only show network ids")
    ls.add_argument("--no-trunc", action="store_true")
    format_flag(ls)
    ls.set_defaults(handler=list_networks)

    inspect = verbs.add_parser("inspect", help="show networks in detail")
    inspect.add_argument("names", nargs="+", metavar="NETWORK")
    inspect.add_argument("-f", "--format", choices=("json",), default="json")
    inspect.set_defaults(handler=inspect_networks)

    rm = verbs.add_parser("rm", help="remove networks")
    rm.add_argument("names", nargs="+", metavar="NETWORK")
    rm.add_argument("-f", "--force", action="store_true", help="no error if missing")
    rm.set_defaults(handler=remove_networks)

    connect = verbs.add_parser("connect", help="connect a sandbox to a network")
    connect.add_argument("network")
    connect.add_argument("sandbox")
    connect.add_argument("--ip")
    connect.add_argument("--mac-address")
    connect.add_argument("--alias", action="append", default=[])
    connect.set_defaults(handler=connect_sandbox)

    disconnect = verbs.add_parser("disconnect", help="disconnect a sandbox from a network")
    disconnect.add_argument("network")
    disconnect.add_argument("sandbox")
    disconnect.add_argument("-f", "--force", action="store_true")
    disconnect.set_defaults(handler=disconnect_sandbox)

    prune = verbs.add_parser("prune", help="remove networks without endpoints")
    prune.add_argument("-f", "--force", action="store_true", help="do not prompt")
    prune.set_defaults(handler=prune_networks)


def create_network(host: Host, args: argparse.Namespace) -> int:
    network = host.create_network(
        args.name,
        driver=args.driver,
        subnet=args.subnet,
        gateway=args.gateway,
        ip_range=args.ip_range,
        aux_addresses=pairs(args.aux_address, "--aux-address"),
        ipv6=args.ipv6,
        internal=args.internal,
        options=pairs(args.opt, "--opt"),
        labels=labels(args.label),
    )
    print(network.id)
    return 0


def list_networks(host: Host, args: argparse.Namespace) -> int:
    networks = host.networks()
    if args.quiet:
        for network in networks:
            print(network.id if args.no_trunc else network.id[:12])
        return 0
    rows = [
        {
            "ID": n.id if args.no_trunc else n.id[:12],
            "Name": n.name,
            "Driver": n.driver,
            "Scope": n.scope,
            "DataPlane": n.dataplane,
        }
        for n in networks
    ]
    if args.format == "json":
        for row in rows:  # Docker prints one JSON object per line
            print(json.dumps(row))
        return 0
    print(f"{'NETWORK ID':<14}{'NAME':<20}{'DRIVER':<10}{'SCOPE':<8}DATAPLANE")
    for row in rows:
        print(
            f"{row['ID']:<14}{row['Name']:<20}{row['Driver']:<10}{row['Scope']:<8}"
            f"{row['DataPlane']}"
        )
    return 0


def inspect_networks(host: Host, args: argparse.Namespace) -> int:
    print_json([host.inspect_network(name) for name in args.names])
    return 0


def remove_networks(host: Host, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.names:
        try:
            host.network(name)
            host.remove_network(name)
            print(name)
        except NetworkNotFound as exc:
            if not args.force:
                error(exc)
                failed = 1
        except KeelnetError as exc:
            error(exc)
            failed = 1
    return failed


def connect_sandbox(host: Host, args: argparse.Namespace) -> int:
    host.connect(args.network, args.sandbox, ip=args.ip, mac=args.mac_address, aliases=args.alias)
    return 0


def disconnect_sandbox(host: Host, args: argparse.Namespace) -> int:
    network = host.network(args.network)
    if not args.force and not [
        e for e in host.endpoints(network.name) if e.sandbox == args.sandbox
    ]:
        raise InvalidRequest(f"sandbox {args.sandbox} is not connected to network {network.name}")
    host.disconnect(network.name, args.sandbox)
    return 0


def prune_networks(host: Host, args: argparse.Namespace) -> int:
    used = {e.network_id for e in host.endpoints()}
    deleted = [n.name for n in host.networks() if n.id not in used]
    for name in deleted:
        host.remove_network(name)
    if deleted:
        print("Deleted Networks:")
        print("\n".join(deleted))
    return 0
