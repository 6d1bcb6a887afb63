"""`keelnet network ...`: Docker's network verbs, flags and output."""

from __future__ import annotations

import argparse
import json
import re

from keelnet.cli import filters
from keelnet.cli._common import (
    READ,
    WRITE,
    Commands,
    Session,
    command,
    error,
    format_flag,
    labels,
    pairs,
    print_rows,
)
from keelnet.errors import InvalidRequest, KeelnetError, NetworkNotFound
from keelnet.model import DEFAULT_IPAM, EXTERNAL_IPAM

TYPE_CHECKING = False  # not typing's: the CLI does not import typing
if TYPE_CHECKING:
    from typing import Any

    from keelnet.model import Network

#: Docker's `--scope` values (keelnet refuses "swarm").
SCOPES = ("local", "global", "swarm")

PRUNE_WARNING = (
    "WARNING! This will remove all custom networks not used by at least one sandbox.\n"
    "Are you sure you want to continue? [y/N] "
)


def add_commands(commands: Commands) -> None:
    network = commands.add_parser("network", help="Manage networks", description="Manage networks")
    network.set_defaults(noun_help=network.print_help)  # `keelnet network` alone: its help
    verbs = network.add_subparsers(dest="verb", metavar="COMMAND")

    create = command(verbs, "create", "Create a network", create_network, WRITE)
    create.add_argument("name", metavar="NETWORK", help="name of the new network")
    create.add_argument(
        "-d", "--driver", default="bridge", help='Driver to manage the Network (default "bridge")'
    )
    create.add_argument(
        "--subnet", action="append", help="Subnet in CIDR format (one IPv4, one IPv6)"
    )
    create.add_argument("--gateway", action="append", help="IPv4 or IPv6 Gateway of a subnet")
    create.add_argument(
        "--ip-range", action="append", help="Allocate dynamic addresses from a sub-range"
    )
    create.add_argument(
        "--aux-address",
        action="append",
        metavar="NAME=IP",
        help="Auxiliary IPv4 or IPv6 addresses kept out of allocation",
    )
    create.add_argument(
        "-o", "--opt", action="append", metavar="KEY=VALUE", help="Set driver specific options"
    )
    create.add_argument(
        "--internal",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Restrict external access to the network",
    )
    create.add_argument(
        "--ipv4",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Enable or disable IPv4 address assignment (default true; "
        "--ipv6 --ipv4=false: an IPv6-only network, drivers bridge, macvlan, ipvlan)",
    )
    create.add_argument(
        "--ipv6",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Enable or disable IPv6 address assignment",
    )
    create.add_argument(
        "--attachable",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Enable manual sandbox attachment (recorded; every keelnet network is)",
    )
    create.add_argument(
        "--ipam-driver",
        default=DEFAULT_IPAM,
        help='IP Address Management Driver (default "default": keelnet\'s own; else a '
        "Docker IPAM plugin's name, found where dockerd finds it)",
    )
    create.add_argument(
        "--ipam-opt",
        action="append",
        metavar="KEY=VALUE",
        help="Set IPAM driver options (sent to a plugin with every pool and address request)",
    )
    create.add_argument(
        "--scope",
        choices=SCOPES,
        help='Control the network\'s scope: "local" (one host; every driver but overlay) '
        'or "global" (overlay); "swarm" needs Docker\'s swarm mode (default: the driver\'s)',
    )
    create.add_argument(
        "--config-only",
        action="store_true",
        help="Create a configuration only network (refused: keelnet has none)",
    )
    create.add_argument(
        "--config-from",
        metavar="NETWORK",
        help="The network from which to copy the configuration (refused: keelnet has none)",
    )
    create.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="Set metadata on a network"
    )

    ls = command(verbs, "ls", "List networks", list_networks, READ, aliases=["list"])
    filters.add_filter_flag(ls, "driver=bridge")
    format_flag(ls)
    ls.add_argument("--no-trunc", action="store_true", help="Do not truncate the output")
    ls.add_argument("-q", "--quiet", action="store_true", help="Only display network IDs")

    inspect = command(
        verbs,
        "inspect",
        "Display detailed information on one or more networks",
        inspect_networks,
        READ,
    )
    inspect.add_argument("names", nargs="+", metavar="NETWORK", help="network name or id")
    inspect.add_argument(
        "-f",
        "--format",
        default="",
        help="Format output: 'json' (one line) or a Go template such as '{{.Name}}'",
    )
    inspect.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Verbose output for diagnostics (local networks: the same fields, as Docker)",
    )

    rm = command(
        verbs, "rm", "Remove one or more networks", remove_networks, WRITE, aliases=["remove"]
    )
    rm.add_argument("names", nargs="+", metavar="NETWORK", help="network name or id")
    rm.add_argument(
        "-f", "--force", action="store_true", help="Do not error if the network does not exist"
    )

    connect = command(verbs, "connect", "Connect a sandbox to a network", connect_sandbox, WRITE)
    connect.add_argument("network", metavar="NETWORK", help="network name or id")
    connect.add_argument("sandbox", metavar="SANDBOX", help="sandbox name or id")
    connect.add_argument("--ip", help='IPv4 address (e.g., "172.30.100.104")')
    connect.add_argument("--ip6", help='IPv6 address (e.g., "2001:db8::33")')
    connect.add_argument(
        "--mac-address", help='MAC address of the interface (e.g., "92:d0:c6:0a:29:33")'
    )
    connect.add_argument(
        "--alias", action="append", default=[], help="Add network-scoped alias for the sandbox"
    )
    connect.add_argument(
        "--driver-opt",
        action="append",
        metavar="KEY=VALUE",
        help="driver options for the endpoint (com.docker.network.endpoint.ifname=NAME)",
    )
    connect.add_argument(
        "--gw-priority",
        type=int,
        default=0,
        help="Highest gw-priority provides the default gateway. "
        "Accepts positive and negative values.",
    )

    disconnect = command(
        verbs, "disconnect", "Disconnect a sandbox from a network", disconnect_sandbox, WRITE
    )
    disconnect.add_argument("network", metavar="NETWORK", help="network name or id")
    disconnect.add_argument("sandbox", metavar="SANDBOX", help="sandbox name or id")
    disconnect.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="Force the sandbox to disconnect from a network",
    )

    prune = command(verbs, "prune", "Remove all unused networks", prune_networks, WRITE)
    filters.add_filter_flag(prune, "until=<timestamp>", short=False)
    prune.add_argument("-f", "--force", action="store_true", help="Do not prompt for confirmation")
    prune.set_defaults(confirm=PRUNE_WARNING)


# --- create ----------------------------------------------------------------------------------


def create_network(session: Session, args: argparse.Namespace) -> int:
    if args.config_only or args.config_from:
        raise InvalidRequest(
            "keelnet has no configuration-only networks: give the configuration "
            "(--subnet, -o ...) to `network create` itself"
        )
    if args.ipam_driver == EXTERNAL_IPAM:
        raise InvalidRequest(
            f'IPAM driver "{EXTERNAL_IPAM}" is how keelnet records networks whose addresses '
            f'dockerd gives: use "{DEFAULT_IPAM}" or an IPAM plugin\'s name'
        )
    if args.scope is not None:
        _check_scope(args.scope, args.driver)
    network = session.host.create_network(
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
        ipam_driver=args.ipam_driver,
        ipam_options=pairs(args.ipam_opt, "--ipam-opt"),
        attachable=args.attachable,
        ipv4=args.ipv4,
    )
    print(network.id)
    return 0


def _check_scope(scope: str, driver_name: str) -> None:
    """`--scope` must be the driver's own: keelnet cannot make a driver's network wider or
    narrower than the driver makes it (a plugin's networks are local to keelnet)."""
    from keelnet.drivers import get_driver

    if scope == "swarm":
        raise InvalidRequest(
            'scope "swarm" needs Docker\'s swarm mode, which keelnet has not: overlay '
            'networks are "global", shared through the cluster store (--store)'
        )
    own = get_driver(driver_name).scope
    if scope != own:
        raise InvalidRequest(
            f'driver {driver_name} makes "{own}" networks, not "{scope}": leave --scope out '
            f"or give --scope {own}"
        )


# --- ls ----------------------------------------------------------------------------------------

LS_COLUMNS = "{{.ID}}\t{{.Name}}\t{{.Driver}}\t{{.Scope}}\t{{.DataPlane}}"
LS_HEADERS = {
    "ID": "NETWORK ID",
    "Name": "NAME",
    "Driver": "DRIVER",
    "Scope": "SCOPE",
    "IPv4": "IPV4",
    "IPv6": "IPV6",
    "Internal": "INTERNAL",
    "Labels": "LABELS",
    "CreatedAt": "CREATED AT",
    "DataPlane": "DATAPLANE",
}


class NetworkRow:
    """A network as `network ls --format` sees it (Docker's networkContext, plus
    DataPlane: `kernel`, `userspace`, or `userspace (not running)`)."""

    go_type = "*network.networkContext"

    def __init__(self, network: Network, no_trunc: bool, plane_status: str | None) -> None:
        self._network = network
        self.ID = network.id if no_trunc else network.id[:12]
        self.Name = network.name
        self.Driver = network.driver
        self.Scope = network.scope
        self.IPv4 = str(network.ipv4).lower()
        self.IPv6 = str(network.ipv6).lower()
        self.Internal = str(network.internal).lower()
        self.Labels = ",".join(f"{k}={v}" for k, v in sorted(network.labels.items()))
        running = plane_status is None or not plane_status.startswith("not running")
        self.DataPlane = network.dataplane if running else f"{network.dataplane} (not running)"

    @property
    def CreatedAt(self) -> str:  # Docker's field names: {{.CreatedAt}}
        from keelnet.cli.formatter import go_time

        return go_time(self._network.created_ns)

    def Label(self, name: str) -> str:  # Docker's name: {{.Label "key"}}
        return self._network.labels.get(name, "")

    def to_json(self) -> dict[str, str]:
        names = (*LS_HEADERS, "ID")
        return {name: getattr(self, name) for name in sorted(set(names))}


def natural_key(text: str) -> list[Any]:
    """Docker sorts names naturally: net2 before net10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def list_networks(session: Session, args: argparse.Namespace) -> int:
    wanted = filters.NetworkFilter.parse(args.filter, filters.LIST_KEYS)
    used = {e.network_id for e in session.endpoints()}
    networks = [n for n in session.networks() if wanted.matches(n, n.id in used)]
    networks.sort(key=lambda n: natural_key(n.name))
    if args.quiet:
        for network in networks:
            print(network.id if args.no_trunc else network.id[:12])
        return 0
    rows = [NetworkRow(n, args.no_trunc, session.plane_status(n)) for n in networks]
    print_rows(args.format, LS_COLUMNS, rows, LS_HEADERS)
    return 0


# --- inspect -----------------------------------------------------------------------------------


def inspect_networks(session: Session, args: argparse.Namespace) -> int:
    from keelnet.cli.formatter import Template
    from keelnet.inspect import network_inspect

    template = None
    if args.format and args.format != "json":
        template = Template(args.format.replace("\\t", "\t").replace("\\n", "\n"))
    found: list[dict[str, Any]] = []
    missing: list[str] = []
    for name in args.names:
        network = session.find_network(name)
        if network is None:
            missing.append(f"network {name} not found")
            continue
        view = network_inspect(session.store_for(network), network, session.store)
        status = session.plane_status(network)
        if status is not None:
            view["DataPlaneStatus"] = status
        found.append(view)
    if template is not None:
        for view in found:
            print(template.execute(_template_view(view)))
    elif args.format == "json":
        print(json.dumps(found, separators=(",", ":")))
    elif found or not missing:
        print(json.dumps(found, indent=4))
    for message in missing:
        error(message)
    return 1 if missing else 0


def _template_view(view: dict[str, Any]) -> dict[str, Any]:
    """What a template sees: the IPAM entries with every field (empty ones included), as
    Docker's typed structs have them, so `{{.Gateway}}` of a gateway-less subnet is ''."""
    ipam = dict(view["IPAM"])
    ipam["Config"] = [
        {"Subnet": "", "IPRange": "", "Gateway": "", "AuxiliaryAddresses": {}, **entry}
        for entry in ipam["Config"]
    ]
    return {**view, "IPAM": ipam}


# --- rm, connect, disconnect, prune -------------------------------------------------------------


def remove_networks(session: Session, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.names:
        try:
            network = session.network(name)
            session.host.remove_network(network.id)
            print(name)
        except NetworkNotFound as exc:
            if not args.force:
                error(exc)
                failed = 1
        except KeelnetError as exc:
            error(exc)
            failed = 1
    return failed


def connect_sandbox(session: Session, args: argparse.Namespace) -> int:
    session.host.connect(
        args.network,
        args.sandbox,
        ip=args.ip,
        ipv6=args.ip6,
        mac=args.mac_address,
        aliases=args.alias,
        driver_options=pairs(args.driver_opt, "--driver-opt"),
        gw_priority=args.gw_priority,
    )
    return 0


def disconnect_sandbox(session: Session, args: argparse.Namespace) -> int:
    host = session.host
    network = host.network(args.network)
    if not args.force:
        sandbox = host.sandbox(args.sandbox)
        if not [e for e in host.endpoints(network.name) if e.sandbox == sandbox.name]:
            raise InvalidRequest(
                f"sandbox {sandbox.name} is not connected to network {network.name}"
            )
    host.disconnect(network.name, args.sandbox)
    return 0


def prune_networks(session: Session, args: argparse.Namespace) -> int:
    wanted = filters.NetworkFilter.parse(args.filter, filters.PRUNE_KEYS)
    host = session.host
    used = {e.network_id for e in host.endpoints()}
    deleted = []
    for network in sorted(host.networks(), key=lambda n: natural_key(n.name)):
        if network.id not in used and wanted.matches(network, in_use=False):
            host.remove_network(network.id)
            deleted.append(network.name)
    if deleted:
        print("Deleted Networks:")
        print("\n".join(deleted))
        print()
    return 0
