"""Docker's plugin protocol without a kernel: discovery, answers, keelnet's IPAM contract."""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from keelnet.errors import (
    AddressOutOfRange,
    InvalidRequest,
    InvalidSubnet,
    NotFound,
    OverlappingSubnet,
    UnknownDriver,
)
from keelnet.ipam.allocator import Allocator
from keelnet.model import JoinInfo, PortMapping, StaticRoute
from keelnet.plugin import protocol
from keelnet.plugin.client import find_plugin
from keelnet.plugin.protocol import PluginError
from keelnet.store import Store

# --- discovery ------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, tuple[Path, Path]]:
    sockets, etc, usr = tmp_path / "run", tmp_path / "etc", tmp_path / "usr"
    for directory in (sockets, etc, usr):
        directory.mkdir()
    return sockets, (etc, usr)


def _socket(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


def test_plugins_are_found_where_dockerd_finds_them(
    dirs: tuple[Path, tuple[Path, Path]],
) -> None:
    sockets, (etc, usr) = dirs
    find = lambda name: find_plugin(name, socket_dir=sockets, spec_dirs=(etc, usr))  # noqa: E731
    (usr / "p.spec").write_text("unix:///run/usr-p.sock\n")
    assert find("p").url == "unix:///run/usr-p.sock"
    (etc / "p.json").write_text(json.dumps({"Name": "p", "Addr": "tcp://192.0.2.9:8080"}))
    assert find("p").url == "tcp://192.0.2.9:8080"  # /etc before /usr/lib
    (etc / "p").mkdir()
    (etc / "p" / "p.spec").write_text("unix:///run/etc-sub.sock")
    assert find("p").url == "unix:///run/etc-sub.sock"  # per directory: .spec before .json
    _socket(sockets / "p" / "p.sock")
    assert find("p").url == f"unix://{sockets}/p/p.sock"  # sockets first
    _socket(sockets / "p.sock")
    assert find("p").url == f"unix://{sockets}/p.sock"
    tls = {"InsecureSkipVerify": True}
    (etc / "t.json").write_text(json.dumps({"Addr": "https://192.0.2.9:8443", "TLSConfig": tls}))
    assert find("t").tls == tls


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("../etc/passwd", None, UnknownDriver, "invalid plugin name"),
        ("a/b", None, UnknownDriver, "invalid plugin name"),
        ("nowhere", None, UnknownDriver, "nowhere.sock"),
        ("noscheme", "/run/x.sock", PluginError, "unknown protocol"),
        ("ftp", "ftp://example/x", PluginError, "unknown protocol"),
    ],
)
def test_bad_plugin_names_and_specs(
    dirs: tuple[Path, tuple[Path, Path]],
    name: str,
    content: str | None,
    error: type[Exception],
    message: str,
) -> None:
    sockets, specs = dirs
    if content is not None:
        (specs[0] / f"{name}.spec").write_text(content)
    with pytest.raises(error, match=message):
        find_plugin(name, socket_dir=sockets, spec_dirs=specs)


def test_a_json_spec_without_an_address_is_refused(dirs: tuple[Path, tuple[Path, Path]]) -> None:
    sockets, specs = dirs
    (specs[0] / "j.json").write_text('{"Name": "j"}')
    with pytest.raises(PluginError, match="is not a plugin spec"):
        find_plugin("j", socket_dir=sockets, spec_dirs=specs)


# --- Join answers -----------------------------------------------------------------------------


def test_join_answers_both_ways() -> None:
    info = JoinInfo(
        src_name="kn-c123",
        gateway="10.0.0.1",
        ipv6_gateway="fd00::1",
        static_routes=(StaticRoute("0.0.0.0/0"), StaticRoute("10.9.0.0/16", "10.0.0.254")),
        disable_gateway_service=True,
    )
    answer = protocol.join_answer(info)
    assert answer == {
        "InterfaceName": {"SrcName": "kn-c123", "DstPrefix": "eth"},
        "Gateway": "10.0.0.1",
        "GatewayIPv6": "fd00::1",
        "StaticRoutes": [
            {"Destination": "0.0.0.0/0", "RouteType": 1},
            {"Destination": "10.9.0.0/16", "RouteType": 0, "NextHop": "10.0.0.254"},
        ],
        "DisableGatewayService": True,
    }
    assert protocol.join_info(json.loads(json.dumps(answer))) == info


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"Gateway": "not-an-ip"}, "unable to parse Gateway"),
        ({"StaticRoutes": [{"Destination": "nowhere", "RouteType": 1}]}, "not a CIDR"),
        ({"StaticRoutes": [{"Destination": "10.0.0.0/8", "RouteType": 7}]}, "RouteType"),
        ({"StaticRoutes": [{"Destination": "10.0.0.0/8", "RouteType": 0}]}, "NextHop"),
        ({"StaticRoutes": ["x"]}, "must hold objects"),
        ({"InterfaceName": "eth0"}, "must be an object"),
    ],
)
def test_bad_join_answers_are_refused(answer: dict[str, object], message: str) -> None:
    with pytest.raises((PluginError, InvalidRequest), match=message):
        protocol.join_info(answer)


# --- keelnet's IPAM behind Docker's contract -------------------------------------------------


@pytest.fixture
def allocator(tmp_path: Path) -> Allocator:
    return Allocator(Store(tmp_path / "state"), lambda: ["172.17.0.0/16", "192.0.2.0/24"])


def test_pools_are_shared_by_identical_requests_and_refused_when_they_overlap(
    allocator: Allocator,
) -> None:
    first = allocator.request_pool("LocalDefault", "10.1.0.0/24", None, {}, False)
    again = allocator.request_pool("LocalDefault", "10.1.0.0/24", None, {}, False)
    assert first == again and first.pool_id == "LocalDefault/10.1.0.0/24"
    with pytest.raises(OverlappingSubnet):
        allocator.request_pool("LocalDefault", "10.1.0.0/16", None, {}, False)
    allocator.release_pool(first.pool_id)
    assert allocator.store.ipam_pool(first.pool_id) is not None  # one reference left
    allocator.release_pool(first.pool_id)
    assert allocator.store.ipam_pool(first.pool_id) is None
    allocator.release_pool(first.pool_id)  # given back already: fine


def test_carved_pools_keep_clear_of_what_is_in_use(allocator: Allocator) -> None:
    first = allocator.request_pool("LocalDefault", None, None, {}, False)
    second = allocator.request_pool("LocalDefault", None, None, {}, False)
    assert (first.subnet, second.subnet) == ("172.18.0.0/16", "172.19.0.0/16")
    v6 = allocator.request_pool("LocalDefault", None, None, {}, True)
    assert v6.subnet.startswith("fd") and v6.subnet.endswith("/64")
    allocator.release_pool(first.pool_id)
    assert allocator.request_pool("LocalDefault", None, None, {}, False).subnet == first.subnet


def test_addresses_come_from_the_range_and_go_back(allocator: Allocator) -> None:
    pool = allocator.request_pool("LocalDefault", "10.2.0.0/24", "10.2.0.128/25", {}, False)
    gateway = allocator.request_address(pool.pool_id, "10.2.0.1", {"RequestAddressType": "x"})
    assert gateway == "10.2.0.1/24"  # asked for: anywhere in the pool
    given = allocator.request_address(pool.pool_id, None, None)
    assert given.startswith("10.2.0.1") and int(given.split("/")[0].split(".")[3]) >= 128
    with pytest.raises(AddressOutOfRange):
        allocator.request_address(pool.pool_id, "10.3.0.1", None)
    with pytest.raises(InvalidRequest):
        allocator.request_address(pool.pool_id, "not-an-ip", None)
    allocator.release_address(pool.pool_id, given.split("/")[0])
    assert allocator.request_address(pool.pool_id, None, None) == given  # free again
    allocator.release_address(pool.pool_id, "10.2.0.77")  # never given: fine
    with pytest.raises(NotFound):
        allocator.request_address("LocalDefault/10.9.0.0/24", None, None)


def test_addresses_keep_clear_of_those_other_hosts_hold(tmp_path: Path) -> None:
    """A global network's subnet: what the cluster's other hosts hold is skipped, and the
    addresses skipped stay free here."""
    held = {"10.6.0.2", "10.6.0.3"}
    allocator = Allocator(Store(tmp_path / "state"), list, lambda subnet: held)
    pool = allocator.request_pool("LocalDefault", "10.6.0.0/24", None, {}, False)
    assert allocator.request_address(pool.pool_id, None, None) == "10.6.0.1/24"
    assert allocator.request_address(pool.pool_id, None, None) == "10.6.0.4/24"
    held.clear()
    assert allocator.request_address(pool.pool_id, None, None) == "10.6.0.2/24"
    held.add("10.6.0.5")  # asked for by hand: given (the cluster store has the last word)
    assert allocator.request_address(pool.pool_id, "10.6.0.5", None) == "10.6.0.5/24"


def test_published_ports_as_libnetwork_writes_them() -> None:
    both = PortMapping("n", "s", 8080, 80, "tcp", None, "10.0.0.2", "fd00::2")
    assert protocol.port_bindings(both) == [
        {"Proto": 6, "IP": "10.0.0.2", "Port": 80, "HostIP": "0.0.0.0", "HostPort": 8080}
        | {"HostPortEnd": 8080},
        {"Proto": 6, "IP": "fd00::2", "Port": 80, "HostIP": "::", "HostPort": 8080}
        | {"HostPortEnd": 8080},
    ]
    one = PortMapping("n", "s", 53, 5353, "udp", "127.0.0.1", "10.0.0.2")
    assert protocol.port_bindings(one) == [
        {"Proto": 17, "IP": "10.0.0.2", "Port": 5353, "HostIP": "127.0.0.1", "HostPort": 53}
        | {"HostPortEnd": 53}
    ]


@pytest.mark.parametrize(
    ("space", "pool", "sub_pool", "v6", "error"),
    [
        ("Elsewhere", "10.4.0.0/24", None, False, InvalidRequest),
        ("LocalDefault", None, "10.4.0.0/25", False, InvalidSubnet),
        ("LocalDefault", "10.4.0.0/24", "10.5.0.0/25", False, InvalidSubnet),
        ("LocalDefault", "10.4.0.1/24", None, False, InvalidSubnet),
        ("LocalDefault", "10.4.0.0/24", None, True, InvalidSubnet),
        ("LocalDefault", "fd00::/64", "10.4.0.0/25", True, InvalidSubnet),
    ],
)
def test_bad_pool_requests(
    allocator: Allocator,
    space: str,
    pool: str | None,
    sub_pool: str | None,
    v6: bool,
    error: type[Exception],
) -> None:
    with pytest.raises(error):
        allocator.request_pool(space, pool, sub_pool, {}, v6)
    assert allocator.store.ipam_pools() == []


def test_the_packaged_plugin_unit_runs_the_plugin(tmp_path: Path) -> None:
    from importlib.resources import files

    from keelnet.cli.plugin import run_plugin
    from keelnet.cli.root import build_parser

    text = (files("keelnet") / "systemd" / "keelnet-plugin.service").read_text()
    (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    program, *argv = shlex.split(exec_start.removeprefix("ExecStart="))
    assert program == "/usr/local/bin/keelnet"
    assert build_parser().parse_args(argv).standalone is run_plugin
    assert "Before=docker.service" in text and "Conflicts=keelnet-agent.service" in text
    analyze, keelnet = shutil.which("systemd-analyze"), shutil.which("keelnet")
    if analyze and keelnet:  # systemd's own check, with ExecStart where keelnet is here
        local = tmp_path / "keelnet-plugin.service"
        local.write_text(text.replace("/usr/local/bin/keelnet", keelnet))
        checked = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
