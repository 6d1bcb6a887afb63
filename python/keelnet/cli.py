"""The `keelnet` command line: Docker's verbs and flags."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import keelnet
from keelnet.errors import InvalidRequest, KeelnetError, NetworkNotFound, SandboxNotFound
from keelnet.host import Host

Handler = Callable[[Host, argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keelnet", description=__doc__)
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
    add_network_commands(commands)
    add_sandbox_commands(commands)
    add_port_commands(commands)
    demo = commands.add_parser(
        "demo", help="build networks in throwaway namespaces, check them, show IPAM at work"
    )
    demo.set_defaults(standalone=run_demo)
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
    return parser


def run_agent(args: argparse.Namespace) -> int:
    from keelnet import agent

    return agent.serve(args, run_in_agent)


def run_in_agent(host: Host, argv: list[str]) -> int:
    """One forwarded command, run against the agent's Host."""
    args = build_parser().parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None or not _forwardable(args):
        _error("the agent runs network, sandbox and port commands only")
        return 2
    return _run(handler, host, args)


def _forwardable(args: argparse.Namespace) -> bool:
    # `sandbox exec` runs a program with the caller's terminal: never in the agent.
    return getattr(args, "handler", None) is not None and args.handler is not sandbox_exec


def run_demo(args: argparse.Namespace) -> int:
    """Networks (root: real namespaces, removed afterwards), then IPAM."""
    from keelnet.demo import run_network_demo
    from keelnet.ipam_demo import run_ipam_demo

    status = run_network_demo()
    print()
    run_ipam_demo()
    return status


def _pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for value in values or ():
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"invalid argument {value!r} for {flag}: expected KEY=VALUE")
        result[key] = item
    return result


def _labels(values: Sequence[str] | None) -> dict[str, str]:
    # Docker accepts a bare `--label key` as key="".
    return {v.partition("=")[0]: v.partition("=")[2] for v in values or ()}


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=4))


def _format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default=None,
        help="output format (json: one JSON document)",
    )


# --- network -------------------------------------------------------------------------------


def add_network_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    create.set_defaults(handler=network_create)

    ls = verbs.add_parser("ls", help="list networks")
    ls.add_argument("-q", "--quiet", action="store_true", help="only show network ids")
    ls.add_argument("--no-trunc", action="store_true")
    _format_flag(ls)
    ls.set_defaults(handler=network_ls)

    inspect = verbs.add_parser("inspect", help="show networks in detail")
    inspect.add_argument("names", nargs="+", metavar="NETWORK")
    inspect.add_argument("-f", "--format", choices=("json",), default="json")
    inspect.set_defaults(handler=network_inspect)

    rm = verbs.add_parser("rm", help="remove networks")
    rm.add_argument("names", nargs="+", metavar="NETWORK")
    rm.add_argument("-f", "--force", action="store_true", help="no error if missing")
    rm.set_defaults(handler=network_rm)

    connect = verbs.add_parser("connect", help="connect a sandbox to a network")
    connect.add_argument("network")
    connect.add_argument("sandbox")
    connect.add_argument("--ip")
    connect.add_argument("--mac-address")
    connect.add_argument("--alias", action="append", default=[])
    connect.set_defaults(handler=network_connect)

    disconnect = verbs.add_parser("disconnect", help="disconnect a sandbox from a network")
    disconnect.add_argument("network")
    disconnect.add_argument("sandbox")
    disconnect.add_argument("-f", "--force", action="store_true")
    disconnect.set_defaults(handler=network_disconnect)

    prune = verbs.add_parser("prune", help="remove networks without endpoints")
    prune.add_argument("-f", "--force", action="store_true", help="do not prompt")
    prune.set_defaults(handler=network_prune)


def network_create(host: Host, args: argparse.Namespace) -> int:
    network = host.create_network(
        args.name,
        driver=args.driver,
        subnet=args.subnet,
        gateway=args.gateway,
        ip_range=args.ip_range,
        aux_addresses=_pairs(args.aux_address, "--aux-address"),
        ipv6=args.ipv6,
        internal=args.internal,
        options=_pairs(args.opt, "--opt"),
        labels=_labels(args.label),
    )
    print(network.id)
    return 0


def network_ls(host: Host, args: argparse.Namespace) -> int:
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


def network_inspect(host: Host, args: argparse.Namespace) -> int:
    _print_json([host.inspect_network(name) for name in args.names])
    return 0


def network_rm(host: Host, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.names:
        try:
            host.network(name)
            host.remove_network(name)
            print(name)
        except NetworkNotFound as exc:
            if not args.force:
                _error(exc)
                failed = 1
        except KeelnetError as exc:
            _error(exc)
            failed = 1
    return failed


def network_connect(host: Host, args: argparse.Namespace) -> int:
    host.connect(args.network, args.sandbox, ip=args.ip, mac=args.mac_address, aliases=args.alias)
    return 0


def network_disconnect(host: Host, args: argparse.Namespace) -> int:
    network = host.network(args.network)
    if not args.force and not [
        e for e in host.endpoints(network.name) if e.sandbox == args.sandbox
    ]:
        raise InvalidRequest(f"sandbox {args.sandbox} is not connected to network {network.name}")
    host.disconnect(network.name, args.sandbox)
    return 0


def network_prune(host: Host, args: argparse.Namespace) -> int:
    used = {e.network_id for e in host.endpoints()}
    deleted = [n.name for n in host.networks() if n.id not in used]
    for name in deleted:
        host.remove_network(name)
    if deleted:
        print("Deleted Networks:")
        print("\n".join(deleted))
    return 0


# --- sandbox -------------------------------------------------------------------------------


def add_sandbox_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sandbox = commands.add_parser("sandbox", help="manage sandboxes (network namespaces)")
    verbs = sandbox.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="create a sandbox")
    create.add_argument("name")
    create.add_argument("--adopt", metavar="PATH_OR_PID", help="manage an existing namespace")
    create.set_defaults(handler=sandbox_create)
    ls = verbs.add_parser("ls", help="list sandboxes")
    _format_flag(ls)
    ls.set_defaults(handler=sandbox_ls)
    rm = verbs.add_parser("rm", help="remove sandboxes")
    rm.add_argument("names", nargs="+", metavar="SANDBOX")
    rm.add_argument("-f", "--force", action="store_true", help="no error if missing")
    rm.set_defaults(handler=sandbox_rm)
    run = verbs.add_parser("exec", help="run a command inside a sandbox")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    run.set_defaults(handler=sandbox_exec)


def sandbox_create(host: Host, args: argparse.Namespace) -> int:
    if args.adopt:
        sandbox = host.adopt_sandbox(args.name, args.adopt)
    else:
        sandbox = host.create_sandbox(args.name)
    print(sandbox.name)
    return 0


def sandbox_ls(host: Host, args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    networks = {n.id: n.name for n in host.networks()}
    all_endpoints = host.endpoints()
    for sandbox in host.sandboxes():
        endpoints = [e for e in all_endpoints if e.sandbox == sandbox.name]
        rows.append(
            {
                "Name": sandbox.name,
                "Path": sandbox.path,
                "Owned": sandbox.owned,
                "Networks": {
                    networks[e.network_id]: {
                        "IPAddress": e.ip or "",
                        "GlobalIPv6Address": e.ipv6 or "",
                        "MacAddress": e.mac,
                        "Interface": e.ifname,
                    }
                    for e in endpoints
                },
            }
        )
    if args.format == "json":
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'NAME':<24}{'NETWORKS':<30}PATH")
    for row in rows:
        print(f"{row['Name']:<24}{','.join(row['Networks']) or '-':<30}{row['Path']}")
    return 0


def sandbox_rm(host: Host, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.names:
        try:
            host.sandbox(name)
        except SandboxNotFound as exc:
            if not args.force:
                _error(exc)
                failed = 1
            continue
        host.remove_sandbox(name)
        print(name)
    return failed


def sandbox_exec(host: Host, args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidRequest("sandbox exec needs a command: keelnet sandbox exec NAME -- CMD")
    from keelnet import sandbox as sandboxes

    try:
        return sandboxes.exec_in(host.sandbox(args.name).path, argv).returncode
    except FileNotFoundError:
        raise InvalidRequest(f"{argv[0]}: executable file not found") from None


# --- port ----------------------------------------------------------------------------------


def add_port_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    port = commands.add_parser("port", help="publish sandbox ports on the host")
    verbs = port.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb, handler in (("publish", port_publish), ("unpublish", port_unpublish)):
        command = verbs.add_parser(verb, help=f"{verb} a port")
        command.add_argument("network")
        command.add_argument("sandbox")
        command.add_argument("mapping", metavar="[HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]")
        command.set_defaults(handler=handler)
    ls = verbs.add_parser("ls", help="list published ports")
    _format_flag(ls)
    ls.set_defaults(handler=port_ls)


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


def port_publish(host: Host, args: argparse.Namespace) -> int:
    host_ip, host_port, container_port, proto = parse_mapping(args.mapping)
    mapping = host.publish(args.network, args.sandbox, host_port, container_port, proto, host_ip)
    print(f"{container_port}/{proto} -> {mapping.host_ip or '0.0.0.0'}:{mapping.host_port}")
    return 0


def port_unpublish(host: Host, args: argparse.Namespace) -> int:
    host_ip, host_port, _, proto = parse_mapping(args.mapping)
    host.unpublish(args.network, args.sandbox, host_port, proto, host_ip)
    return 0


def port_ls(host: Host, args: argparse.Namespace) -> int:
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


# --- entry point ---------------------------------------------------------------------------


def _error(exc: BaseException | str) -> None:
    print(f"Error: {exc}", file=sys.stderr)


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
            _error(exc)
            return 1
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    if _forwardable(args):
        from keelnet import agent

        answer = agent.forward(
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
            return _run(handler, host, args)
    except KeelnetError as exc:
        _error(exc)
        return 1
    except PermissionError as exc:
        _error(f"permission denied: {exc.filename or exc} (keelnet needs root)")
        return 1


def _run(handler: Handler, host: Host, args: argparse.Namespace) -> int:
    try:
        return handler(host, args)
    except KeelnetError as exc:
        _error(exc)
        return 1


if __name__ == "__main__":
    sys.exit(main())
