"""`keelnet sandbox ...`: network namespaces, what containers are to Docker's networks."""

from __future__ import annotations

import argparse
import json
from typing import Any

from keelnet.cli._common import Commands, error, format_flag
from keelnet.errors import InvalidRequest, SandboxNotFound
from keelnet.host import Host


def add_commands(commands: Commands) -> None:
    sandbox = commands.add_parser("sandbox", help="manage sandboxes (network namespaces)")
    verbs = sandbox.add_subparsers(dest="verb", metavar="VERB", required=True)
    create = verbs.add_parser("create", help="create a sandbox")
    create.add_argument("name")
    create.add_argument("--adopt", metavar="PATH_OR_PID", help="manage an existing namespace")
    create.set_defaults(handler=create_sandbox)
    ls = verbs.add_parser("ls", help="list sandboxes")
    format_flag(ls)
    ls.set_defaults(handler=list_sandboxes)
    rm = verbs.add_parser("rm", help="remove sandboxes")
    rm.add_argument("names", nargs="+", metavar="SANDBOX")
    rm.add_argument("-f", "--force", action="store_true", help="no error if missing")
    rm.set_defaults(handler=remove_sandboxes)
    run = verbs.add_parser("exec", help="run a command inside a sandbox")
    run.add_argument("name")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD")
    # Runs a program with the caller's terminal: never forwarded to the agent.
    run.set_defaults(handler=exec_in_sandbox, local_only=True)


def create_sandbox(host: Host, args: argparse.Namespace) -> int:
    if args.adopt:
        sandbox = host.adopt_sandbox(args.name, args.adopt)
    else:
        sandbox = host.create_sandbox(args.name)
    print(sandbox.name)
    return 0


def list_sandboxes(host: Host, args: argparse.Namespace) -> int:
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


def remove_sandboxes(host: Host, args: argparse.Namespace) -> int:
    failed = 0
    for name in args.names:
        try:
            host.sandbox(name)
        except SandboxNotFound as exc:
            if not args.force:
                error(exc)
                failed = 1
            continue
        host.remove_sandbox(name)
        print(name)
    return failed


def exec_in_sandbox(host: Host, args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidRequest("sandbox exec needs a command: keelnet sandbox exec NAME -- CMD")
    from keelnet import sandbox as sandboxes

    try:
        return sandboxes.exec_in(host.sandbox(args.name).path, argv).returncode
    except FileNotFoundError:
        raise InvalidRequest(f"{argv[0]}: executable file not found") from None
