"""What every noun's commands share: the session they run in, flags, output, errors.

Commands import nothing heavy at module level: a command the agent answers, or one that
only reads the store, must not pay for pyroute2 and the drivers (~0.1 s) it never uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from keelnet.errors import InvalidRequest, KeelnetError, NetworkNotFound

# `typing` costs as much to import as a whole command the agent answers: checkers only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeAlias

    from keelnet.host import Host
    from keelnet.model import Endpoint, Network
    from keelnet.store import NetworkStore, Store
    from keelnet.store.etcd import EtcdStore

# (Annotations are not evaluated: TypeAlias need not exist at run time.)
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

# How a command may run, set as `access` on its parser:
READ = "read"  # reads the store only: the agent answers it, else this process does
WRITE = "write"  # changes the host: the agent runs it, started when a network needs it
LOCAL = "local"  # runs here with the caller's terminal (sandbox exec), after the agent is up


class Session:
    """The host a command works on: its store, and a Host when the command changes things.

    In the agent the session wraps the agent's Host; in a CLI process it opens the store or
    the Host only when the command first asks for it."""

    def __init__(
        self,
        netns: str | None,
        state_dir: str | None,
        host: Host | None = None,
        cluster_store: str | None = None,
    ):
        self.netns = netns
        self.state_dir = state_dir
        self._host = host
        self._in_agent = host is not None
        self._store: Store | None = None
        #: `--store` (else $KEELNET_STORE): where global (overlay) networks live.
        self.cluster_store = cluster_store or os.environ.get("KEELNET_STORE") or None
        self._global: EtcdStore | None = None

    @property
    def in_agent(self) -> bool:
        """Whether the command runs in the agent, on the agent's long-open Host."""
        return self._in_agent

    @property
    def host(self) -> Host:
        if self._host is None:
            from keelnet.host import Host

            # This process exits with the command: names are the agent's to serve (the
            # sandboxes' resolv.conf files are written here all the same), and it is no
            # cluster member (an overlay connect runs in the agent, which is).
            self._host = Host(
                netns=self.netns,
                state_dir=self.state_dir,
                serve_dns=False,
                store=self.cluster_store,
                member=False,
            )
        return self._host

    @property
    def store(self) -> Store:
        if self._host is not None:
            return self._host.store
        if self._store is None:
            self._store = _open_store(self.netns, self.state_dir)
        return self._store

    @property
    def global_store(self) -> EtcdStore | None:
        """The cluster store, if one is given (opened when first asked for)."""
        if self._host is not None and self._host.global_store is not None:
            return self._host.global_store
        if self.cluster_store is None:
            return None
        if self._global is None:
            import socket

            from keelnet.sandbox import host_path
            from keelnet.store.etcd import EtcdStore

            name = self.netns.rsplit("/", 1)[-1] if self.netns else socket.gethostname()
            namespace = host_path(self.netns)
            self._global = EtcdStore(self.cluster_store, host=name, netns_path=namespace)
        return self._global

    def networks(self) -> list[Network]:
        """The host's local networks, then the cluster's global ones."""
        found = self.store.networks()
        if self.global_store is not None:
            found += self.global_store.networks()
        return found

    def endpoints(self) -> list[Endpoint]:
        """The host's endpoints, on local and global networks."""
        found = self.store.endpoints()
        if self.global_store is not None:
            found += self.global_store.endpoints()
        return found

    def find_network(self, name: str) -> Network | None:
        network = self.store.find_network(name)
        if network is None and self.global_store is not None:
            network = self.global_store.find_network(name)
        return network

    def network(self, name: str) -> Network:
        network = self.find_network(name)
        if network is None:
            raise NetworkNotFound(f"network {name} not found")
        return network

    def store_for(self, network: Network) -> NetworkStore:
        """The store that holds `network`: the host's, or the cluster's."""
        if network.scope == "global" and self.global_store is not None:
            return self.global_store
        return self.store

    def plane_status(self, network: Network) -> str | None:
        """`running`, or `not running: why`, for a network whose plane needs the agent;
        None for one whose data plane is the kernel's."""
        from keelnet import agent

        if network.dataplane != "userspace":
            return None  # a kernel plane runs without the agent (its DNS does not)
        if self._in_agent:
            assert self._host is not None
            if self._host.data_plane_running(network):
                return "running"
            if not self.store.endpoints(network_id=network.id):
                return "idle: opens with the first endpoint"
            return f"not running: the agent could not restore it (see {self.agent_log()})"
        return f"not running: {agent.absence(self.netns, self.state_dir)}"

    def agent_log(self) -> str:
        from keelnet import agent

        return agent.Paths.of(self.netns, self.state_dir).log

    def close(self) -> None:
        if self._in_agent:
            return
        if self._host is not None:
            self._host.close()
        if self._store is not None:
            self._store.close()
        if self._global is not None:
            self._global.close()


def _open_store(netns: str | None, state_dir: str | None) -> Store:
    """The host's store for reading, without a Host (no pyroute2, no drivers), refused
    as a Host refuses it when another store manages the namespace."""
    from pathlib import Path

    from keelnet.kernel.ownership import Owner
    from keelnet.sandbox import host_path
    from keelnet.statedir import state_dir_path
    from keelnet.store import Store
    from keelnet.store.claim import NamespaceClaim

    path = Path(state_dir_path(netns, state_dir))
    namespace = host_path(netns)
    store = Store(path)
    try:
        NamespaceClaim(netns, namespace, Owner(store.store_id), path).check()
    except BaseException:
        store.close()
        raise
    return store


#: Runs one parsed command in a session, returns the exit code.
Handler = Callable[[Session, argparse.Namespace], int]


def command(
    verbs: Commands, name: str, help: str, handler: Handler, access: str, **kwargs: Any
) -> argparse.ArgumentParser:
    """A verb's parser, with its handler and how it may run (READ, WRITE or LOCAL)."""
    parser = verbs.add_parser(name, help=help, description=help, **kwargs)
    parser.set_defaults(handler=handler, access=access)
    return parser


def pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for value in values or ():
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"invalid argument {value!r} for {flag}: expected KEY=VALUE")
        result[key] = item
    return result


def labels(values: Sequence[str] | None) -> dict[str, str]:
    # Docker accepts a bare `--label key` as key="".
    return {v.partition("=")[0]: v.partition("=")[2] for v in values or ()}


FORMAT_HELP = (
    "output format: 'table' (default), 'table TEMPLATE', 'json' (one object per line) "
    "or a Go template such as '{{.Name}}'"
)


def format_flag(parser: argparse.ArgumentParser, help: str = FORMAT_HELP) -> None:
    parser.add_argument("--format", default="", metavar="FORMAT", help=help)


def print_rows(
    format_text: str, columns: str, rows: Sequence[object], headers: dict[str, str]
) -> None:
    """Rows as `--format` says: a table of `columns` by default (see cli.formatter)."""
    from keelnet.cli import formatter

    fmt = formatter.parse_format(format_text, columns)
    sys.stdout.write(formatter.render_rows(fmt, rows, headers))


def error(message: BaseException | str) -> None:
    print(f"Error: {message}", file=sys.stderr)


def describe(exc: BaseException) -> str:
    """One line for any exception a command can meet: what went wrong and what to do."""
    if isinstance(exc, KeelnetError):
        return str(exc)
    if isinstance(exc, PermissionError):
        where = f" on {exc.filename}" if exc.filename else ""
        return f"permission denied{where}: keelnet needs root"
    if type(exc).__module__ == "sqlite3":
        return f"the state database cannot be used: {exc} (is the state directory writable?)"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{detail} (an unexpected error; KEELNET_DEBUG=1 shows where it came from)"


# CAP_NET_ADMIN (links, addresses, routes, nftables) and CAP_SYS_ADMIN (setns, mounting
# named namespaces): what every keelnet command that touches a host needs.
_NEEDED_CAPS = {"CAP_NET_ADMIN": 12, "CAP_SYS_ADMIN": 21}


def missing_privileges() -> str | None:
    """Why this process cannot run keelnet commands (None: it can)."""
    if os.geteuid() == 0:
        return None
    try:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("CapEff:"))
        effective = int(line.split()[1], 16)
    except (OSError, StopIteration, ValueError):
        effective = 0
    missing = [name for name, bit in _NEEDED_CAPS.items() if not effective >> bit & 1]
    if not missing:
        return None
    return (
        f"keelnet needs root: it manages network namespaces, interfaces and firewall rules "
        f"(missing {' and '.join(missing)}); run it with sudo"
    )
