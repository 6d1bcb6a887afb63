"""SQLite store: one database per host in its state directory.

Every Host operation runs inside one `BEGIN IMMEDIATE` transaction that is held while the
kernel is changed, so writers from several processes are serialised (no two get the same
address) and a process killed mid-operation leaves nothing committed: what it made in the
kernel is marked as ours and unreferenced, which is exactly what `reconcile` removes.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from keelnet.errors import CorruptState, KeelnetError
from keelnet.ipam import AddressPool, SubnetPools
from keelnet.model import Endpoint, IpamConfig, Network, PortMapping, Sandbox

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS networks (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL,
    dataplane TEXT NOT NULL, created TEXT NOT NULL, ipv6 INTEGER NOT NULL,
    internal INTEGER NOT NULL, options TEXT NOT NULL, labels TEXT NOT NULL,
    ipam TEXT NOT NULL, kernel_name TEXT, subnets_from_defaults TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS address_pools (
    network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
    version INTEGER NOT NULL, pool BLOB NOT NULL, PRIMARY KEY (network_id, version)
);
CREATE TABLE IF NOT EXISTS sandboxes (
    name TEXT PRIMARY KEY, path TEXT NOT NULL, owned INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    sandbox TEXT NOT NULL REFERENCES sandboxes(name),
    ip TEXT, ipv6 TEXT, mac TEXT NOT NULL, ifname TEXT NOT NULL, host_ifname TEXT,
    gateway TEXT, ipv6_gateway TEXT, aliases TEXT NOT NULL,
    UNIQUE (network_id, sandbox)
);
CREATE TABLE IF NOT EXISTS ports (
    network_id TEXT NOT NULL REFERENCES networks(id), sandbox TEXT NOT NULL,
    host_ip TEXT NOT NULL, host_port INTEGER NOT NULL, proto TEXT NOT NULL,
    container_port INTEGER NOT NULL, container_ip TEXT, container_ipv6 TEXT,
    PRIMARY KEY (host_ip, host_port, proto)
);
"""


def default_state_dir(netns: str | None) -> Path:
    """`$KEELNET_STATE_DIR`, else /var/lib/keelnet/<host netns name or "default">."""
    configured = os.environ.get("KEELNET_STATE_DIR")
    if configured:
        return Path(configured)
    host = Path(netns).name if netns else "default"
    return Path("/var/lib/keelnet") / host


class Store:
    """Desired state of one host. Use `transaction()` around every change.

    The local-scope :class:`~keelnet.store.base.NetworkStore`, plus the host's
    sandboxes and published ports."""

    scope = "local"

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "keelnet.db"
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE. A Host
        # may be handed from one thread to another (one at a time).
        self._db = sqlite3.connect(
            self.path, timeout=60.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._in_transaction = False
        with self.transaction():
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),))
            elif str(row["value"]) != str(_SCHEMA_VERSION):
                raise CorruptState(f"{self.path}: unknown store schema {row['value']}")

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested use joins the outer one."""
        if self._in_transaction:
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            self._db.execute("ROLLBACK")
            raise
        self._in_transaction = False
        self._db.execute("COMMIT")

    # --- networks ------------------------------------------------------------------------

    def find_network(self, name_or_id: str) -> Network | None:
        row = self._db.execute(
            "SELECT * FROM networks WHERE name=? OR id=? ORDER BY name=? DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id),
        ).fetchone()
        if row is None and len(name_or_id) >= 12:  # Docker accepts an id prefix
            row = self._db.execute(
                "SELECT * FROM networks WHERE substr(id, 1, ?) = ?",
                (len(name_or_id), name_or_id),
            ).fetchone()
        return _network(row) if row else None

    def networks(self) -> list[Network]:
        rows = self._db.execute("SELECT * FROM networks ORDER BY name").fetchall()
        return [_network(row) for row in rows]

    def add_network(self, network: Network, subnets_from_defaults: list[str]) -> None:
        self._db.execute(
            "INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                network.id,
                network.name,
                network.driver,
                network.dataplane,
                network.created,
                int(network.ipv6),
                int(network.internal),
                json.dumps(network.options),
                json.dumps(network.labels),
                json.dumps([_ipam_json(c) for c in network.ipam]),
                network.kernel_name,
                json.dumps(subnets_from_defaults),
            ),
        )

    def subnets_from_defaults(self, network_id: str) -> list[str]:
        row = self._db.execute(
            "SELECT subnets_from_defaults FROM networks WHERE id=?", (network_id,)
        ).fetchone()
        return list(json.loads(row[0])) if row else []

    def remove_network(self, network_id: str) -> None:
        self._db.execute("DELETE FROM address_pools WHERE network_id=?", (network_id,))
        self._db.execute("DELETE FROM networks WHERE id=?", (network_id,))

    # --- IPAM blobs ----------------------------------------------------------------------

    def address_pool(self, network_id: str, version: int) -> AddressPool | None:
        row = self._db.execute(
            "SELECT pool FROM address_pools WHERE network_id=? AND version=?",
            (network_id, version),
        ).fetchone()
        return AddressPool.from_bytes(bytes(row[0])) if row else None

    def save_address_pool(self, network_id: str, version: int, pool: AddressPool) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO address_pools VALUES (?,?,?)",
            (network_id, version, pool.to_bytes()),
        )

    def subnet_pools(self) -> SubnetPools:
        row = self._db.execute("SELECT value FROM meta WHERE key='subnet_pools'").fetchone()
        return SubnetPools.from_bytes(bytes(row[0])) if row else SubnetPools()

    def save_subnet_pools(self, pools: SubnetPools) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('subnet_pools', ?)", (pools.to_bytes(),)
        )

    # --- sandboxes -----------------------------------------------------------------------

    def find_sandbox(self, name: str) -> Sandbox | None:
        row = self._db.execute("SELECT * FROM sandboxes WHERE name=?", (name,)).fetchone()
        return Sandbox(row["name"], row["path"], bool(row["owned"])) if row else None

    def sandboxes(self) -> list[Sandbox]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY name").fetchall()
        return [Sandbox(r["name"], r["path"], bool(r["owned"])) for r in rows]

    def add_sandbox(self, sandbox: Sandbox) -> None:
        self._db.execute(
            "INSERT INTO sandboxes VALUES (?,?,?)", (sandbox.name, sandbox.path, int(sandbox.owned))
        )

    def remove_sandbox(self, name: str) -> None:
        self._db.execute("DELETE FROM sandboxes WHERE name=?", (name,))

    # --- endpoints -----------------------------------------------------------------------

    def endpoints(
        self, *, network_id: str | None = None, sandbox: str | None = None
    ) -> list[Endpoint]:
        rows = self._rows("endpoints", "sandbox", network_id=network_id, sandbox=sandbox)
        return [_endpoint(row) for row in rows]

    def _rows(
        self, table: str, order_by: str, *, network_id: str | None, sandbox: str | None
    ) -> list[sqlite3.Row]:
        """Rows of `table` (endpoints or ports), filtered by what is given."""
        query, args = f"SELECT * FROM {table} WHERE 1=1", []
        if network_id is not None:
            query += " AND network_id=?"
            args.append(network_id)
        if sandbox is not None:
            query += " AND sandbox=?"
            args.append(sandbox)
        return list(self._db.execute(f"{query} ORDER BY {order_by}", args).fetchall())

    def add_endpoint(self, ep: Endpoint) -> None:
        self._db.execute(
            "INSERT INTO endpoints VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                ep.id,
                ep.network_id,
                ep.sandbox,
                ep.ip,
                ep.ipv6,
                ep.mac,
                ep.ifname,
                ep.host_ifname,
                ep.gateway,
                ep.ipv6_gateway,
                json.dumps(list(ep.aliases)),
            ),
        )

    def remove_endpoint(self, endpoint_id: str) -> None:
        self._db.execute("DELETE FROM endpoints WHERE id=?", (endpoint_id,))

    # --- published ports -----------------------------------------------------------------

    def ports(
        self, *, network_id: str | None = None, sandbox: str | None = None
    ) -> list[PortMapping]:
        rows = self._rows("ports", "host_port", network_id=network_id, sandbox=sandbox)
        return [
            PortMapping(
                r["network_id"],
                r["sandbox"],
                r["host_port"],
                r["container_port"],
                r["proto"],
                r["host_ip"] or None,
                r["container_ip"],
                r["container_ipv6"],
            )
            for r in rows
        ]

    def add_port(self, port: PortMapping) -> None:
        try:
            self._db.execute(
                "INSERT INTO ports VALUES (?,?,?,?,?,?,?,?)",
                (
                    port.network_id,
                    port.sandbox,
                    port.host_ip or "",
                    port.host_port,
                    port.proto,
                    port.container_port,
                    port.container_ip,
                    port.container_ipv6,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise PortTaken(str(exc)) from None

    def remove_port(self, host_ip: str | None, host_port: int, proto: str) -> int:
        cursor = self._db.execute(
            "DELETE FROM ports WHERE host_ip=? AND host_port=? AND proto=?",
            (host_ip or "", host_port, proto),
        )
        return cursor.rowcount


class PortTaken(KeelnetError):
    """The (host_ip, host_port, proto) key is already used; Host turns it into PortInUse."""


def _ipam_json(config: IpamConfig) -> dict[str, Any]:
    return {
        "subnet": config.subnet,
        "gateway": config.gateway,
        "ip_range": config.ip_range,
        "aux_addresses": config.aux_addresses,
    }


def _network(row: sqlite3.Row) -> Network:
    return Network(
        id=row["id"],
        name=row["name"],
        driver=row["driver"],
        dataplane=row["dataplane"],
        created=row["created"],
        ipam=tuple(IpamConfig(**c) for c in json.loads(row["ipam"])),
        ipv6=bool(row["ipv6"]),
        internal=bool(row["internal"]),
        options=json.loads(row["options"]),
        labels=json.loads(row["labels"]),
        kernel_name=row["kernel_name"],
    )


def _endpoint(row: sqlite3.Row) -> Endpoint:
    return Endpoint(
        ip=row["ip"],
        ipv6=row["ipv6"],
        mac=row["mac"],
        ifname=row["ifname"],
        gateway=row["gateway"],
        ipv6_gateway=row["ipv6_gateway"],
        id=row["id"],
        network_id=row["network_id"],
        sandbox=row["sandbox"],
        host_ifname=row["host_ifname"],
        aliases=tuple(json.loads(row["aliases"])),
    )
