"""One store owns a namespace's objects: another store, a damaged one or an empty one never
removes them, and a damaged store is reported, never started over."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import Lab, kernel_state, store_state

import keelnet
from keelnet import errors
from keelnet.kernel import ownership
from keelnet.kernel.namespaces import iproute, netns_path
from keelnet.store import sqlite as store_sqlite


@pytest.fixture
def owned(lab: Lab) -> Iterator[keelnet.Host]:
    """Store A (the lab's state dir) with a bridge network, a connected sandbox and a
    published port: bridges, veths, nftables tables and iptables chains of its own."""
    host = keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    try:
        host.create_network("a-net", subnet="10.60.0.0/24")
        host.create_sandbox(lab.name("a"))
        host.connect("a-net", lab.name("a"))
        host.publish("a-net", lab.name("a"), 8080, 80)
        yield host
    finally:
        host.close()


def _everything(lab: Lab) -> tuple[object, ...]:
    """The kernel state of the host namespace, the store's dump and its database bytes."""
    db = lab.state_dir / "keelnet.db"
    return kernel_state(lab.host), store_state(lab.state_dir), db.stat().st_size


def _cli(lab: Lab, state_dir: Path | None, *argv: str, env: dict[str, str] | None = None):
    prefix = ["--state-dir", str(state_dir)] if state_dir else []
    return subprocess.run(
        [sys.executable, "-m", "keelnet.cli", "--netns", lab.host, *prefix, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_links_carry_the_store_mark_from_creation(lab: Lab, owned: keelnet.Host) -> None:
    network = owned.network("a-net")
    with iproute(netns_path(lab.host)) as ipr:
        marked = {link.ifname: link.mark for link in ownership.owned_links(ipr, owned.owner)}
    endpoint = owned.endpoints("a-net")[0]
    assert marked == {
        network.kernel_name: (owned.owner.store_id, network.id, None),
        endpoint.host_ifname: (owned.owner.store_id, network.id, endpoint.id),
    }
    with iproute(netns_path(lab.name("a"))) as ipr:
        inside = ownership.owned_links(ipr, owned.owner)
    assert [(link.ifname, link.mark) for link in inside] == [
        ("eth0", (owned.owner.store_id, network.id, endpoint.id))
    ]


@pytest.mark.parametrize("command", [["network", "ls"], ["sandbox", "ls"], ["port", "ls"]])
def test_another_state_dir_on_the_cli_is_refused_and_touches_nothing(
    lab: Lab, owned: keelnet.Host, tmp_path: Path, command: list[str]
) -> None:
    before = _everything(lab)
    other = tmp_path / "other-store"
    result = _cli(lab, other, *command)
    assert result.returncode == 1
    assert str(lab.state_dir.resolve()) in result.stderr, result.stderr
    assert "managed by the keelnet store" in result.stderr
    assert _everything(lab) == before
    owned.reconcile()  # store A, reopened, still has all of it
    assert _everything(lab) == before
    assert [e.sandbox for e in owned.endpoints("a-net")] == [lab.name("a")]


def test_keelnet_state_dir_from_the_environment_is_refused(
    lab: Lab, owned: keelnet.Host, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _everything(lab)
    result = _cli(lab, None, "network", "ls", env={"KEELNET_STATE_DIR": str(tmp_path / "b")})
    assert result.returncode == 1 and str(lab.state_dir.resolve()) in result.stderr
    monkeypatch.setenv("KEELNET_STATE_DIR", str(tmp_path / "b"))
    with pytest.raises(errors.NamespaceClaimed) as refused:
        keelnet.Host(netns=lab.host)
    assert refused.value.state_dir == str(lab.state_dir.resolve())
    assert refused.value.store_id == owned.owner.store_id
    assert _everything(lab) == before


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_damaged_database_is_reported_never_started_over(
    lab: Lab, owned: keelnet.Host, tmp_path: Path, damage: str
) -> None:
    owned.close()
    db = lab.state_dir / "keelnet.db"
    saved = tmp_path / "saved.db"
    shutil.copy(db, saved)
    kernel_before = kernel_state(lab.host)
    for sidecar in ("keelnet.db-wal", "keelnet.db-shm"):
        (lab.state_dir / sidecar).unlink(missing_ok=True)
    db.write_bytes(b"" if damage == "truncated" else os.urandom(8192))
    damaged = db.read_bytes()
    with pytest.raises(errors.CorruptState) as raised:
        keelnet.Host(netns=lab.host, state_dir=lab.state_dir)
    assert str(db) in str(raised.value) and "restore" in str(raised.value)
    # Another store is refused too: the owner cannot be read, so it may still hold on.
    with pytest.raises(errors.NamespaceClaimed) as refused:
        keelnet.Host(netns=lab.host, state_dir=tmp_path / "b")
    assert "cannot be read" in str(refused.value)
    assert kernel_state(lab.host) == kernel_before
    assert db.read_bytes() == damaged
    shutil.copy(saved, db)  # restored from the backup, the store has everything again
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as again:
        assert again.reconcile()["links"] == 0
        assert [e.sandbox for e in again.endpoints("a-net")] == [lab.name("a")]
    assert kernel_state(lab.host) == kernel_before


def test_a_new_store_never_removes_what_another_made(lab: Lab, owned: keelnet.Host) -> None:
    """The owner's state directory is gone (and with it its claim): a new store takes the
    namespace over, but what the old one made stays until removed by hand."""
    network, endpoint = owned.network("a-net"), owned.endpoints("a-net")[0]
    owned.close()
    shutil.rmtree(lab.state_dir)
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir.with_name("fresh")) as fresh:
        fresh.reconcile()
        fresh.create_network("b-net", subnet="10.61.0.0/24")
        with iproute(netns_path(lab.host)) as ipr:
            names = {link.get("ifname") for link in ipr.link("dump")}
        assert {network.kernel_name, endpoint.host_ifname} <= names
        fresh.remove_network("b-net")


def test_the_claim_goes_when_the_store_holds_nothing(lab: Lab, tmp_path: Path) -> None:
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as first:
        first.create_network("n", subnet="10.62.0.0/24")
        assert ownership.read_claim(netns_path(lab.host)) is not None
        with pytest.raises(errors.NamespaceClaimed):
            keelnet.Host(netns=lab.host, state_dir=tmp_path / "second")
        first.remove_network("n")
        assert ownership.read_claim(netns_path(lab.host)) is None
    with keelnet.Host(netns=lab.host, state_dir=tmp_path / "second") as second:
        second.create_network("m", subnet="10.62.0.0/24")
        claim = ownership.read_claim(netns_path(lab.host))
        assert claim is not None and claim.store_id == second.owner.store_id
        assert claim.state_dir == str((tmp_path / "second").resolve())
        second.remove_network("m")


def test_a_long_state_dir_is_named_whole(lab: Lab, tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*["a-rather-long-directory-name"] * 12, 'odd "name" dir')
    with keelnet.Host(netns=lab.host, state_dir=deep) as host:
        host.create_sandbox(lab.name("s"))
        with pytest.raises(errors.NamespaceClaimed) as refused:
            keelnet.Host(netns=lab.host, state_dir=tmp_path / "other")
        assert refused.value.state_dir == str(deep.resolve())
        host.remove_sandbox(lab.name("s"))


def test_open_reconciles_only_when_something_calls_for_it(lab: Lab, owned: keelnet.Host) -> None:
    """A link in the store's group without an alias is what a killed connect leaves: an
    open finds it only after a journal entry says an operation was cut short."""
    stray = "kn-vstray"
    with iproute(netns_path(lab.host)) as ipr:
        ipr.link("add", ifname=stray, kind="bridge", **owned.owner.link_attributes())
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir):
        pass
    assert _link_exists(lab, stray)  # nothing called for a reconcile: not even looked at
    journal = lab.state_dir / "journal"
    journal.mkdir(exist_ok=True)
    (journal / "999999999-1-cutshort").write_text('{"sandboxes": []}')  # no such process
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir):
        pass
    assert not _link_exists(lab, stray)
    assert list(journal.iterdir()) == []


def test_open_reconciles_in_a_new_kernel_epoch(lab: Lab, owned: keelnet.Host) -> None:
    stray = "kn-vstray"
    with iproute(netns_path(lab.host)) as ipr:
        ipr.link("add", ifname=stray, kind="bridge", **owned.owner.link_attributes())
    db = sqlite3.connect(lab.state_dir / "keelnet.db")
    with db:
        db.execute("UPDATE meta SET value='another-boot/1' WHERE key='kernel_epoch'")
    db.close()
    with keelnet.Host(netns=lab.host, state_dir=lab.state_dir):
        pass
    assert not _link_exists(lab, stray)


def test_one_store_manages_one_namespace(lab: Lab, owned: keelnet.Host) -> None:
    """The store of the lab's host opened for another namespace: its reconcile there would
    find none of the store's objects and drop them from the store."""
    before = _everything(lab)
    with pytest.raises(errors.StateDirError, match="a state directory of its own"):
        keelnet.Host(netns=lab.outside, state_dir=lab.state_dir)
    assert _everything(lab) == before


def test_schema_migrates_from_version_1(lab: Lab, tmp_path: Path) -> None:
    state = tmp_path / "v1"
    state.mkdir()
    db = sqlite3.connect(state / "keelnet.db")
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        store_sqlite.MIGRATIONS[0](db)
        db.execute("INSERT INTO meta VALUES ('schema', '1')")
        db.execute("INSERT INTO sandboxes VALUES ('old', '/proc/1/ns/net', 0)")
    db.close()
    store = store_sqlite.Store(state)
    try:
        assert len(store.store_id) == 16
        assert store.meta("schema") == str(store_sqlite.SCHEMA_VERSION)
        assert [box.name for box in store.sandboxes()] == ["old"]
    finally:
        store.close()


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    store_sqlite.Store(tmp_path / "s").close()
    db = sqlite3.connect(tmp_path / "s" / "keelnet.db")
    with db:
        db.execute("UPDATE meta SET value='99' WHERE key='schema'")
    db.close()
    with pytest.raises(errors.CorruptState, match="newer keelnet"):
        store_sqlite.Store(tmp_path / "s")


def _link_exists(lab: Lab, name: str) -> bool:
    with iproute(netns_path(lab.host)) as ipr:
        return bool(ipr.link_lookup(ifname=name))
