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
from keelnet.model import Endpoint, IpamConfig, IpamPool, Network, PortMapping, Sandbox

_SCHEMA_VERSION = 2
#: Each table as the current schema has it.
_TABLES = {
    "meta": "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "networks": """CREATE TABLE IF NOT EXISTS networks (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, driver TEXT NOT NULL,
        dataplane TEXT NOT NULL, created TEXT NOT NULL, ipv6 INTEGER NOT NULL,
        internal INTEGER NOT NULL, options TEXT NOT NULL, labels TEXT NOT NULL,
        ipam TEXT NOT NULL, kernel_name TEXT, subnets_from_defaults TEXT NOT NULL,
        ipam_driver TEXT NOT NULL DEFAULT 'default', ipam_options TEXT NOT NULL DEFAULT '{}'
    )""",
    "address_pools": """CREATE TABLE IF NOT EXISTS address_pools (
        network_id TEXT NOT NULL REFERENCES networks(id) ON DELETE CASCADE,
        version INTEGER NOT NULL, pool BLOB NOT NULL, PRIMARY KEY (network_id, version)
    )""",
    "sandboxes": """CREATE TABLE IF NOT EXISTS sandboxes (
        name TEXT PRIMARY KEY, path TEXT NOT NULL, owned INTEGER NOT NULL,
        transient INTEGER NOT NULL DEFAULT 0
    )""",
    # sandbox is NULL while an endpoint is created but not joined (Docker's flow).
    "endpoints": """CREATE TABLE IF NOT EXISTS endpoints (
        id TEXT PRIMARY KEY,
        network_id TEXT NOT NULL REFERENCES networks(id),
        sandbox TEXT REFERENCES sandboxes(name),
        ip TEXT, ipv6 TEXT, mac TEXT NOT NULL, ifname TEXT NOT NULL, host_ifname TEXT,
        gateway TEXT, ipv6_gateway TEXT, aliases TEXT NOT NULL,
        driver_data TEXT NOT NULL DEFAULT '{}',
        UNIQUE (network_id, sandbox)
    )""",
    "ports": """CREATE TABLE IF NOT EXISTS ports (
        network_id TEXT NOT NULL REFERENCES networks(id), sandbox TEXT NOT NULL,
        host_ip TEXT NOT NULL, host_port INTEGER NOT NULL, proto TEXT NOT NULL,
        container_port INTEGER NOT NULL, container_ip TEXT, container_ipv6 TEXT,
        PRIMARY KEY (host_ip, host_port, proto)
    )""",
    # keelnet's IPAM as Docker's IPAM driver: pools by id, with a reference count.
    "ipam_pools": """CREATE TABLE IF NOT EXISTS ipam_pools (
        id TEXT PRIMARY KEY, address_space TEXT NOT NULL, subnet TEXT NOT NULL,
        sub_pool TEXT NOT NULL, v6 INTEGER NOT NULL, refs INTEGER NOT NULL,
        from_defaults INTEGER NOT NULL, pool BLOB NOT NULL
    )""",
}
#: The statements that take a store from schema version N to N + 1.
_MIGRATIONS = {
    # 1 -> 2: endpoints without a sandbox (created, not yet joined: Docker's flow), what
    # drivers keep per endpoint, sandboxes adopted by a join, who allocates a network's
    # addresses, and the pools of keelnet's IPAM as Docker's IPAM driver.
    1: [
        "ALTER TABLE networks ADD COLUMN ipam_driver TEXT NOT NULL DEFAULT 'default'",
        "ALTER TABLE networks ADD COLUMN ipam_options TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE sandboxes ADD COLUMN transient INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE endpoints RENAME TO endpoints_v1",
        _TABLES["endpoints"],
        "INSERT INTO endpoints SELECT *, '{}' FROM endpoints_v1",
        "DROP TABLE endpoints_v1",
    ],
}


def default_state_dir(netns: str | None) -> Path:
    """`$KEELNET_STATE_DIR`, else /var/lib/keelnet/<host netns name or "default">."""
    configured = os.environ.get("KEELNET_STATE_DIR")
    if configured:
        return Path(configured)
    host = Path(netns).name if netns else "default"
    return Path("/var/lib/keelnet") / host


class Store:
    """Desired state of one host. Use `transaction()` around every change."""

    def __init__(self, state_dir: Path) -> None:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = state_dir / "keelnet.db"
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        self._db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._in_transaction = False
        with self.transaction():
            self._db.execute(_TABLES["meta"])
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            text = str(_SCHEMA_VERSION) if row is None else str(row["value"])
            version = int(text) if text.isdigit() else 0
            if not 1 <= version <= _SCHEMA_VERSION:
                raise CorruptState(f"{self.path}: unknown store schema {text}")
            while version < _SCHEMA_VERSION:
                for statement in _MIGRATIONS[version]:
                    self._db.execute(statement)
                version += 1
            for statement in _TABLES.values():
                self._db.execute(statement)
            self._db.execute(
                "INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(_SCHEMA_VERSION),)
            )

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
            "INSERT INTO networks VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                network.ipam_driver,
                json.dumps(network.ipam_options),
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
        return _sandbox(row) if row else None

    def sandboxes(self) -> list[Sandbox]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY name").fetchall()
        return [_sandbox(row) for row in rows]

    def add_sandbox(self, sandbox: Sandbox) -> None:
        self._db.execute(
            "INSERT INTO sandboxes VALUES (?,?,?,?)",
            (sandbox.name, sandbox.path, int(sandbox.owned), int(sandbox.transient)),
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

    def find_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._db.execute("SELECT * FROM endpoints WHERE id=?", (endpoint_id,)).fetchone()
        return _endpoint(row) if row else None

    def set_endpoint_sandbox(self, endpoint_id: str, sandbox: str) -> None:
        """Join ("": leave) the endpoint to the sandbox of that name."""
        self._db.execute(
            "UPDATE endpoints SET sandbox=? WHERE id=?", (sandbox or None, endpoint_id)
        )

    def add_endpoint(self, ep: Endpoint) -> None:
        self._db.execute(
            "INSERT INTO endpoints VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                ep.id,
                ep.network_id,
                ep.sandbox or None,
                ep.ip,
                ep.ipv6,
                ep.mac,
                ep.ifname,
                ep.host_ifname,
                ep.gateway,
                ep.ipv6_gateway,
                json.dumps(list(ep.aliases)),
                json.dumps(ep.driver_data),
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

    # --- pools of keelnet's IPAM as Docker's IPAM driver -----------------------------------

    def ipam_pool(self, pool_id: str) -> IpamPool | None:
        row = self._db.execute("SELECT * FROM ipam_pools WHERE id=?", (pool_id,)).fetchone()
        return _ipam_pool(row) if row else None

    def ipam_pools(self) -> list[IpamPool]:
        rows = self._db.execute("SELECT * FROM ipam_pools ORDER BY subnet").fetchall()
        return [_ipam_pool(row) for row in rows]

    def save_ipam_pool(self, pool: IpamPool) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO ipam_pools VALUES (?,?,?,?,?,?,?,?)",
            (
                pool.id,
                pool.address_space,
                pool.subnet,
                pool.sub_pool or "",
                int(pool.v6),
                pool.refs,
                int(pool.from_defaults),
                pool.addresses.to_bytes(),
            ),
        )

    def remove_ipam_pool(self, pool_id: str) -> None:
        self._db.execute("DELETE FROM ipam_pools WHERE id=?", (pool_id,))


class PortTaken(KeelnetError):
    """The (host_ip, host_port, proto) key is already used; Host turns it into PortInUse."""


def _ipam_json(config: IpamConfig) -> dict[str, Any]:
    return {
        "subnet": config.subnet,
        "gateway": config.gateway,
        "ip_range": config.ip_range,
        "aux_addresses": config.aux_addresses,
        "pool_id": config.pool_id,
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
        ipam_driver=row["ipam_driver"],
        ipam_options=json.loads(row["ipam_options"]),
    )


def _ipam_pool(row: sqlite3.Row) -> IpamPool:
    return IpamPool(
        id=row["id"],
        address_space=row["address_space"],
        subnet=row["subnet"],
        sub_pool=row["sub_pool"] or None,
        v6=bool(row["v6"]),
        refs=int(row["refs"]),
        from_defaults=bool(row["from_defaults"]),
        addresses=AddressPool.from_bytes(bytes(row["pool"])),
    )


def _sandbox(row: sqlite3.Row) -> Sandbox:
    return Sandbox(row["name"], row["path"], bool(row["owned"]), bool(row["transient"]))


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
        sandbox=row["sandbox"] or "",
        host_ifname=row["host_ifname"],
        aliases=tuple(json.loads(row["aliases"])),
        driver_data=json.loads(row["driver_data"]),
    )
