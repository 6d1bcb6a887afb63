"""SQLite store: one database per host in its state directory.

Every Host operation runs inside one `BEGIN IMMEDIATE` transaction that is held while the
kernel is changed, so writers from several processes are serialised (no two get the same
address) and a process killed mid-operation leaves nothing committed: what it made in the
kernel carries the store's mark and is unreferenced, which is exactly what `reconcile`
removes.

The database is made whole or not at all (built aside, then linked into place), so an
empty or unreadable `keelnet.db` is always damage: it raises `CorruptState` and is never
taken for a new store, which would forget what the old one made. Its schema grows by
`MIGRATIONS`, applied in order from the version a database records.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from keelnet.errors import Conflict, CorruptState, InvalidRequest, KeelnetError, StateDirError
from keelnet.ipam import AddressPool, SubnetPools
from keelnet.kernel.ownership import new_store_id
from keelnet.model import Endpoint, IpamConfig, IpamPool, Network, Peer, PortMapping, Sandbox

DB_NAME = "keelnet.db"
_BUSY_TIMEOUT = 60.0

_TABLES_V1 = """
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


def token_hex(nbytes: int) -> str:
    """secrets.token_hex, imported when first needed: reading a store needs none."""
    import secrets

    return secrets.token_hex(nbytes)


def _execute_all(db: sqlite3.Connection, script: str) -> None:
    """Run `;`-separated statements inside the open transaction (executescript commits)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def _store_identity(db: sqlite3.Connection) -> None:
    db.execute("INSERT OR IGNORE INTO meta VALUES ('store_id', ?)", (new_store_id(),))


#: Migration N takes a database from schema version N to N + 1, inside the transaction
#: that records the new version. Append, never edit: databases in the field record how
#: far they got. (Version 1 predates this list: its tables are created IF NOT EXISTS.)
def _sandbox_ids_and_priorities(db: sqlite3.Connection) -> None:
    """Sandboxes get an id (what `network inspect` keys Containers by) and the
    --gw-priority of each of their endpoints (kept with the sandbox, as libnetwork keeps
    it); networks record --attachable. Columns added, never a table rebuilt."""
    _execute_all(
        db,
        """
        ALTER TABLE sandboxes ADD COLUMN id TEXT;
        ALTER TABLE sandboxes ADD COLUMN gw_priorities TEXT NOT NULL DEFAULT '{}';
        ALTER TABLE networks ADD COLUMN attachable INTEGER NOT NULL DEFAULT 0
        """,
    )
    for (name,) in db.execute("SELECT name FROM sandboxes").fetchall():
        db.execute("UPDATE sandboxes SET id=? WHERE name=?", (token_hex(32), name))
    db.execute("CREATE UNIQUE INDEX sandboxes_by_id ON sandboxes(id)")


#: 4: libnetwork's endpoint flow (keelnet as Docker's plugin): endpoints created before
#: they are joined (no sandbox yet), what a driver keeps per endpoint, sandboxes adopted by
#: a join, who allocates a network's addresses, and keelnet's pools as Docker's IPAM.
#: `endpoints` is rebuilt: SQLite cannot drop a NOT NULL (its sandbox) in place.
_DOCKER_FLOW = """
ALTER TABLE networks ADD COLUMN ipam_driver TEXT NOT NULL DEFAULT 'default';
ALTER TABLE networks ADD COLUMN ipam_options TEXT NOT NULL DEFAULT '{}';
ALTER TABLE sandboxes ADD COLUMN transient INTEGER NOT NULL DEFAULT 0;
ALTER TABLE endpoints RENAME TO endpoints_v2;
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY,
    network_id TEXT NOT NULL REFERENCES networks(id),
    sandbox TEXT REFERENCES sandboxes(name),
    ip TEXT, ipv6 TEXT, mac TEXT NOT NULL, ifname TEXT NOT NULL, host_ifname TEXT,
    gateway TEXT, ipv6_gateway TEXT, aliases TEXT NOT NULL,
    driver_data TEXT NOT NULL DEFAULT '{}',
    UNIQUE (network_id, sandbox)
);
INSERT INTO endpoints SELECT *, '{}' FROM endpoints_v2;
DROP TABLE endpoints_v2;
CREATE TABLE ipam_pools (
    id TEXT PRIMARY KEY, address_space TEXT NOT NULL, subnet TEXT NOT NULL,
    sub_pool TEXT NOT NULL, v6 INTEGER NOT NULL, refs INTEGER NOT NULL,
    from_defaults INTEGER NOT NULL, pool BLOB NOT NULL
);
"""

MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    lambda db: _execute_all(db, _TABLES_V1),
    _store_identity,  # 2: the id every kernel mark of this store carries
    _sandbox_ids_and_priorities,  # 3
    lambda db: _execute_all(db, _DOCKER_FLOW),  # 4
)
SCHEMA_VERSION = len(MIGRATIONS)


P = ParamSpec("P")
R = TypeVar("R")


def _state_error(path: Path, exc: Exception) -> KeelnetError:
    """The keelnet error for a failure to use the database at `path`."""
    text = str(exc)
    if isinstance(exc, sqlite3.InterfaceError | sqlite3.ProgrammingError):  # a bad argument
        return InvalidRequest(f"keelnet cannot look that up: {text}")
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(f"{path}: the store refused a change that clashes with it: {text}")
    if isinstance(exc, sqlite3.OperationalError) and "locked" in text:
        return StateDirError(
            f"{path}: another process has held the store's lock for over "
            f"{_BUSY_TIMEOUT:.0f} s; try again when it is done"
        )
    if isinstance(exc, sqlite3.OperationalError) and (
        "readonly" in text or "read-only" in text or "unable to open" in text or "I/O" in text
    ):
        return StateDirError(
            f"cannot write the keelnet store {path} ({text}): the state directory must be "
            "writable by keelnet (check its mount and permissions, or use --state-dir)"
        )
    return _damaged(path, text)


def _damaged(path: Path, detail: str) -> CorruptState:
    return CorruptState(
        f"the keelnet store {path} is damaged ({detail}). keelnet changes nothing while it "
        "is: restore that file from a backup, or move it aside to start an empty store "
        "(what the old store made in the kernel then stays until you remove it)"
    )


def _guarded(method: Callable[P, R]) -> Callable[P, R]:
    """Database and row-decoding failures of a Store method as keelnet errors."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise _state_error(args[0].path, exc) from exc  # type: ignore[attr-defined]
        except (ValueError, TypeError, KeyError) as exc:  # json, a row of the wrong shape
            if isinstance(exc, KeelnetError):
                raise
            raise _damaged(args[0].path, f"a damaged row: {exc}") from exc  # type: ignore[attr-defined]

    return wrapper


def check_state_dir(state_dir: Path) -> None:
    """Refuse a state directory path that cannot be one, changing nothing."""
    if "\0" in str(state_dir):
        raise InvalidRequest(f"state directory {str(state_dir)!r} holds a NUL character")
    for path in (state_dir, *state_dir.parents):
        if path.exists() or path.is_symlink():
            if not path.is_dir():
                raise StateDirError(
                    f"state directory {state_dir}: {path} is not a directory; give keelnet a "
                    "directory (--state-dir or KEELNET_STATE_DIR)"
                )
            return


def _make_state_dir(state_dir: Path) -> None:
    check_state_dir(state_dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StateDirError(
            f"cannot use state directory {state_dir}: {exc.strerror or exc} (it must be a "
            "directory keelnet can write; see --state-dir or KEELNET_STATE_DIR)"
        ) from None


def _create(path: Path) -> None:
    """Build a new database aside and link it into place: `path` exists whole or not at
    all. A process that loses the race to another uses that one's."""
    building = path.with_name(f".{path.name}.{os.getpid()}-{token_hex(4)}")
    try:
        db = sqlite3.connect(building, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")  # recorded in the file
            db.execute("BEGIN IMMEDIATE")
            _migrate(db, building)
            db.execute("COMMIT")
        finally:
            db.close()
        with contextlib.suppress(FileExistsError):  # another process made it first
            os.link(building, path)
    except sqlite3.Error as exc:
        raise _state_error(path, exc) from exc
    except OSError as exc:
        raise StateDirError(f"cannot create the keelnet store {path}: {exc}") from None
    finally:
        building.unlink(missing_ok=True)


def _migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the schema to SCHEMA_VERSION (inside the caller's transaction)."""
    db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
    row = db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
    try:
        version = int(row[0]) if row is not None else 0
    except ValueError:
        raise _damaged(path, f"schema version {row[0]!r}") from None
    if version > SCHEMA_VERSION:
        raise CorruptState(
            f"the keelnet store {path} has schema version {version}, written by a newer "
            f"keelnet (this one knows up to {SCHEMA_VERSION}): upgrade keelnet"
        )
    for step in MIGRATIONS[version:]:
        step(db)
    if version != SCHEMA_VERSION:
        db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))


class Store:
    """Desired state of one host. Use `transaction()` around every change.

    The local-scope :class:`~keelnet.store.base.NetworkStore`, plus the host's
    sandboxes and published ports."""

    scope = "local"

    def __init__(self, state_dir: Path) -> None:
        _make_state_dir(state_dir)
        self.path = state_dir / DB_NAME
        try:
            if not self.path.exists():
                _create(self.path)
            elif self.path.stat().st_size == 0:
                raise _damaged(self.path, "the file is empty: truncated")
        except OSError as exc:
            raise StateDirError(f"cannot use the keelnet store {self.path}: {exc}") from None
        self._in_transaction = False
        self._open()

    @_guarded
    def _open(self) -> None:
        # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
        self._db = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None or str(row[0]) != str(SCHEMA_VERSION):
                with self.transaction():
                    _migrate(self._db, self.path)
            self.store_id = self.meta("store_id") or ""
            if len(self.store_id) != 16:
                raise _damaged(self.path, f"store id {self.store_id!r}")
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested use joins the outer one."""
        if self._in_transaction:
            yield
            return
        self._begin()
        self._in_transaction = True
        try:
            yield
        except BaseException:
            self._in_transaction = False
            self._end("ROLLBACK")
            raise
        self._in_transaction = False
        self._end("COMMIT")

    @_guarded
    def _begin(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    @_guarded
    def _end(self, verb: str) -> None:
        self._db.execute(verb)

    # --- meta ----------------------------------------------------------------------------

    @_guarded
    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else str(row[0])

    @_guarded
    def set_meta(self, key: str, value: str) -> None:
        self._db.execute(  # an update in place: the row keeps its place in dumps
            "INSERT INTO meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    @_guarded
    def holds_anything(self) -> bool:
        """Whether the store has networks or sandboxes (and so owns kernel objects)."""
        row = self._db.execute(
            "SELECT EXISTS (SELECT 1 FROM networks) OR EXISTS (SELECT 1 FROM sandboxes)"
        ).fetchone()
        return bool(row[0])

    # --- networks ------------------------------------------------------------------------

    @_guarded
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

    @_guarded
    def networks(self) -> list[Network]:
        rows = self._db.execute("SELECT * FROM networks ORDER BY name").fetchall()
        return [_network(row) for row in rows]

    @_guarded
    def add_network(self, network: Network, subnets_from_defaults: list[str]) -> None:
        self._db.execute(
            "INSERT INTO networks (id, name, driver, dataplane, created, ipv6, internal, "
            "options, labels, ipam, kernel_name, subnets_from_defaults, attachable, "
            "ipam_driver, ipam_options) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
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
                int(network.attachable),
                network.ipam_driver,
                json.dumps(network.ipam_options),
            ),
        )

    @_guarded
    def subnets_from_defaults(self, network_id: str) -> list[str]:
        row = self._db.execute(
            "SELECT subnets_from_defaults FROM networks WHERE id=?", (network_id,)
        ).fetchone()
        return list(json.loads(row[0])) if row else []

    @_guarded
    def remove_network(self, network_id: str) -> None:
        self._db.execute("DELETE FROM address_pools WHERE network_id=?", (network_id,))
        self._db.execute("DELETE FROM networks WHERE id=?", (network_id,))

    # --- IPAM blobs ----------------------------------------------------------------------

    @_guarded
    def address_pool(self, network_id: str, version: int) -> AddressPool | None:
        row = self._db.execute(
            "SELECT pool FROM address_pools WHERE network_id=? AND version=?",
            (network_id, version),
        ).fetchone()
        return AddressPool.from_bytes(bytes(row[0])) if row else None

    @_guarded
    def save_address_pool(self, network_id: str, version: int, pool: AddressPool) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO address_pools VALUES (?,?,?)",
            (network_id, version, pool.to_bytes()),
        )

    @_guarded
    def subnet_pools(self) -> SubnetPools:
        row = self._db.execute("SELECT value FROM meta WHERE key='subnet_pools'").fetchone()
        return SubnetPools.from_bytes(bytes(row[0])) if row else SubnetPools()

    @_guarded
    def save_subnet_pools(self, pools: SubnetPools) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO meta VALUES ('subnet_pools', ?)", (pools.to_bytes(),)
        )

    # --- sandboxes -----------------------------------------------------------------------

    @_guarded
    def find_sandbox(self, name_or_id: str) -> Sandbox | None:
        """A sandbox by name, id, or an id prefix of 12 digits or more (as Docker's)."""
        row = self._db.execute(
            "SELECT * FROM sandboxes WHERE name=? OR id=? ORDER BY name=? DESC LIMIT 1",
            (name_or_id, name_or_id, name_or_id),
        ).fetchone()
        if row is None and len(name_or_id) >= 12:
            rows = self._db.execute(
                "SELECT * FROM sandboxes WHERE substr(id, 1, ?) = ? LIMIT 2",
                (len(name_or_id), name_or_id),
            ).fetchall()
            row = rows[0] if len(rows) == 1 else None
        return _sandbox(row) if row else None

    @_guarded
    def sandboxes(self) -> list[Sandbox]:
        rows = self._db.execute("SELECT * FROM sandboxes ORDER BY name").fetchall()
        return [_sandbox(row) for row in rows]

    @_guarded
    def add_sandbox(self, sandbox: Sandbox) -> None:
        self._db.execute(
            "INSERT INTO sandboxes (name, path, owned, id, gw_priorities, transient) "
            "VALUES (?,?,?,?,?,?)",
            (
                sandbox.name,
                sandbox.path,
                int(sandbox.owned),
                sandbox.id,
                json.dumps(sandbox.gw_priorities),
                int(sandbox.transient),
            ),
        )

    @_guarded
    def set_gw_priority(self, sandbox: str, endpoint_id: str, priority: int | None) -> None:
        """Record an endpoint's --gw-priority with its sandbox (None: forget it)."""
        row = self._db.execute(
            "SELECT gw_priorities FROM sandboxes WHERE name=?", (sandbox,)
        ).fetchone()
        if row is None:
            return
        priorities = json.loads(row[0])
        if priority is None:
            priorities.pop(endpoint_id, None)
        else:
            priorities[endpoint_id] = priority
        self._db.execute(
            "UPDATE sandboxes SET gw_priorities=? WHERE name=?", (json.dumps(priorities), sandbox)
        )

    @_guarded
    def remove_sandbox(self, name: str) -> None:
        self._db.execute("DELETE FROM sandboxes WHERE name=?", (name,))

    # --- endpoints -----------------------------------------------------------------------

    @_guarded
    def endpoints(
        self, *, network_id: str | None = None, sandbox: str | None = None
    ) -> list[Endpoint]:
        rows = self._rows("endpoints", "sandbox", network_id=network_id, sandbox=sandbox)
        return [_endpoint(row) for row in rows]

    def addresses(self, network_id: str) -> list[str]:
        found = self.endpoints(network_id=network_id)
        return [a for e in found for a in (e.ip, e.ipv6) if a is not None]

    def peers(self, network_id: str) -> list[Peer] | None:
        return None  # local scope: no other host takes part

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

    @_guarded
    def find_endpoint(self, endpoint_id: str) -> Endpoint | None:
        row = self._db.execute("SELECT * FROM endpoints WHERE id=?", (endpoint_id,)).fetchone()
        return _endpoint(row) if row else None

    @_guarded
    def set_endpoint_sandbox(self, endpoint_id: str, sandbox: str) -> None:
        """Join ("": leave) the endpoint to the sandbox of that name."""
        self._db.execute(
            "UPDATE endpoints SET sandbox=? WHERE id=?", (sandbox or None, endpoint_id)
        )

    @_guarded
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

    @_guarded
    def remove_endpoint(self, endpoint_id: str) -> None:
        self._db.execute("DELETE FROM endpoints WHERE id=?", (endpoint_id,))

    # --- published ports -----------------------------------------------------------------

    @_guarded
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

    @_guarded
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

    @_guarded
    def remove_port(self, host_ip: str | None, host_port: int, proto: str) -> int:
        cursor = self._db.execute(
            "DELETE FROM ports WHERE host_ip=? AND host_port=? AND proto=?",
            (host_ip or "", host_port, proto),
        )
        return cursor.rowcount

    # --- pools of keelnet's IPAM as Docker's IPAM driver -----------------------------------

    @_guarded
    def ipam_pool(self, pool_id: str) -> IpamPool | None:
        row = self._db.execute("SELECT * FROM ipam_pools WHERE id=?", (pool_id,)).fetchone()
        return _ipam_pool(row) if row else None

    @_guarded
    def ipam_pools(self) -> list[IpamPool]:
        rows = self._db.execute("SELECT * FROM ipam_pools ORDER BY subnet").fetchall()
        return [_ipam_pool(row) for row in rows]

    @_guarded
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

    @_guarded
    def remove_ipam_pool(self, pool_id: str) -> None:
        self._db.execute("DELETE FROM ipam_pools WHERE id=?", (pool_id,))


@dataclass(frozen=True)
class ForeignStore:
    """What a look at another store's database found: `state` is "missing" (no
    database), "damaged", "busy" (its lock stayed taken) or "readable"."""

    state: str
    store_id: str | None = None
    holds_anything: bool = False
    detail: str = ""


@contextmanager
def foreign_store(state_dir: Path) -> Iterator[ForeignStore]:
    """A look at the store in `state_dir`, holding its write lock for the block's
    length, so that store cannot start an operation while the caller acts on what it
    saw. Never creates or changes anything there."""
    path = state_dir.resolve() / DB_NAME
    if not path.exists():
        yield ForeignStore("missing")
        return
    try:
        db = sqlite3.connect(
            f"{path.as_uri()}?mode=rw", uri=True, timeout=5.0, isolation_level=None
        )
    except sqlite3.Error as exc:
        yield ForeignStore("damaged", detail=str(exc))
        return
    try:
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT value FROM meta WHERE key='store_id'").fetchone()
            holds = db.execute(
                "SELECT EXISTS (SELECT 1 FROM networks) OR EXISTS (SELECT 1 FROM sandboxes)"
            ).fetchone()
            seen = ForeignStore("readable", str(row[0]) if row else None, bool(holds[0]))
        except sqlite3.OperationalError as exc:
            seen = ForeignStore("busy" if "locked" in str(exc) else "damaged", detail=str(exc))
        except sqlite3.Error as exc:
            seen = ForeignStore("damaged", detail=str(exc))
        yield seen
    finally:
        db.close()  # rolls back: nothing was written


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
        attachable=bool(row["attachable"]),
    )


def _sandbox(row: sqlite3.Row) -> Sandbox:
    return Sandbox(
        name=row["name"],
        path=row["path"],
        owned=bool(row["owned"]),
        id=row["id"] or "",
        gw_priorities={str(k): int(v) for k, v in json.loads(row["gw_priorities"]).items()},
        transient=bool(row["transient"]),
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
