"""`keelnet sandbox ...`: network namespaces, what containers are to Docker's networks."""

from __future__ import annotations

import argparse

from keelnet.cli._common import (
    LOCAL,
    READ,
    WRITE,
    Commands,
    Session,
    command,
    error,
    format_flag,
    print_rows,
)
from keelnet.errors import InvalidRequest, SandboxNotFound

TYPE_CHECKING = False  # not typing's: the CLI does not import typing
if TYPE_CHECKING:
    from typing import Any

    from keelnet.model import Sandbox

LS_COLUMNS = "{{.ID}}\t{{.Name}}\t{{.Networks}}\t{{.Path}}"
LS_HEADERS = {
    "ID": "SANDBOX ID",
    "Name": "NAME",
    "Networks": "NETWORKS",
    "Path": "PATH",
    "Owned": "OWNED",
}


def add_commands(commands: Commands) -> None:
    sandbox = commands.add_parser(
        "sandbox",
        help="Manage sandboxes (network namespaces)",
        description="Manage sandboxes (network namespaces)",
    )
    sandbox.set_defaults(noun_help=sandbox.print_help)  # `keelnet sandbox` alone: its help
    verbs = sandbox.add_subparsers(dest="verb", metavar="COMMAND")
    create = command(verbs, "create", "Create a sandbox", create_sandbox, WRITE)
    create.add_argument("name", metavar="SANDBOX", help="name of the new sandbox")
    create.add_argument(
        "--adopt",
        metavar="PATH_OR_PID",
        help="manage an existing namespace (a path, `ip netns` name or pid) instead",
    )
    ls = command(verbs, "ls", "List sandboxes", list_sandboxes, READ, aliases=["list"])
    format_flag(ls)
    ls.add_argument("--no-trunc", action="store_true", help="Do not truncate the output")
    rm = command(
        verbs, "rm", "Remove one or more sandboxes", remove_sandboxes, WRITE, aliases=["remove"]
    )
    rm.add_argument("names", nargs="+", metavar="SANDBOX", help="sandbox name")
    rm.add_argument(
        "-f", "--force", action="store_true", help="Do not error if the sandbox does not exist"
    )
    run = command(verbs, "exec", "Run a command inside a sandbox", exec_in_sandbox, LOCAL)
    run.add_argument("name", metavar="SANDBOX", help="sandbox name")
    run.add_argument(
        "argv", nargs=argparse.REMAINDER, metavar="-- COMMAND", help="the command and arguments"
    )


class SandboxRow:
    go_type = "*sandbox.sandboxContext"

    def __init__(self, sandbox: Sandbox, networks: dict[str, Any], no_trunc: bool) -> None:
        self.ID = sandbox.id if no_trunc else sandbox.id[:12]
        self.Name = sandbox.name
        self.Path = sandbox.path
        self.Owned = str(sandbox.owned).lower()
        self.Networks = ",".join(networks) or "-"
        self._json = {
            "ID": sandbox.id,
            "Name": sandbox.name,
            "Path": sandbox.path,
            "Owned": sandbox.owned,
            "Networks": networks,
        }

    def to_json(self) -> dict[str, Any]:
        return self._json


def create_sandbox(session: Session, args: argparse.Namespace) -> int:
    if args.adopt:
        sandbox = session.host.adopt_sandbox(args.name, args.adopt)
    else:
        sandbox = session.host.create_sandbox(args.name)
    print(sandbox.id)  # as `docker create` prints the container's id
    return 0


def list_sandboxes(session: Session, args: argparse.Namespace) -> int:
    store = session.store
    networks = {n.id: n.name for n in store.networks()}
    all_endpoints = store.endpoints()
    rows = []
    for sandbox in store.sandboxes():
        attached = {
            networks[e.network_id]: {
                "IPAddress": e.ip or "",
                "GlobalIPv6Address": e.ipv6 or "",
                "MacAddress": e.mac,
                "Interface": e.ifname,
            }
            for e in all_endpoints
            if e.sandbox == sandbox.name
        }
        rows.append(SandboxRow(sandbox, attached, args.no_trunc))
    print_rows(args.format, LS_COLUMNS, rows, LS_HEADERS)
    return 0


def remove_sandboxes(session: Session, args: argparse.Namespace) -> int:
    failed = 0
    host = session.host
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


def exec_in_sandbox(session: Session, args: argparse.Namespace) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise InvalidRequest("sandbox exec needs a command: keelnet sandbox exec NAME -- CMD")
    from keelnet import sandbox as sandboxes

    found = session.store.find_sandbox(args.name)
    if found is None:
        raise SandboxNotFound(f"no such sandbox: {args.name}")
    try:
        return sandboxes.exec_in(found.path, argv).returncode
    except FileNotFoundError:
        raise InvalidRequest(f"{argv[0]}: executable file not found") from None
