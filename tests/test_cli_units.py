"""Unit tests (no root) for the CLI's pieces: Go templates, tables, filters, the default
route choice, address counts, one-line errors and what a command line costs to start."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from keelnet.cli import formatter
from keelnet.cli._common import describe
from keelnet.cli.filters import LIST_KEYS, PRUNE_KEYS, NetworkFilter, filter_pair, parse_until
from keelnet.cli.network import NetworkRow, natural_key
from keelnet.cli.root import _go_bools, build_parser
from keelnet.drivers._gateway import DEVICE, Candidate, choose
from keelnet.errors import InvalidRequest, NetworkNotFound
from keelnet.inspect import subnet_status
from keelnet.ipam import AddressPool
from keelnet.model import IpamConfig, Network, rfc3339nano, timestamp_ns

NET = Network(
    id="0123456789ab" + "cd" * 26,
    name="web",
    driver="bridge",
    dataplane="kernel",
    created="2026-11-29T22:38:20.031058628Z",
    ipam=(IpamConfig("10.1.0.0/24", "10.1.0.1"),),
    ipv6=False,
    internal=False,
    options={"com.docker.network.bridge.name": "kn-web"},
    labels={"team": "net", "tier": "front"},
    kernel_name="kn-web",
)
VIEW = {
    "Name": "web",
    "IPAM": {"Config": [{"Subnet": "10.1.0.0/24", "Gateway": "10.1.0.1"}, {"Subnet": "fd::/64"}]},
    "Options": {"com.docker.network.bridge.name": "kn-web"},
    "Labels": {},
    "Internal": False,
}


# --- Go templates --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{.Name}}", "web"),
        ("{{json .Labels}}", "{}"),
        (
            "{{json .IPAM.Config}}",
            '[{"Subnet":"10.1.0.0/24","Gateway":"10.1.0.1"},{"Subnet":"fd::/64"}]',
        ),
        ("{{range .IPAM.Config}}{{.Subnet}};{{end}}", "10.1.0.0/24;fd::/64;"),
        ('{{index .Options "com.docker.network.bridge.name"}}', "kn-web"),
        ('{{index .Options "absent"}}', ""),
        ("{{if .Internal}}int{{else}}ext{{end}}", "ext"),
        ("{{range .Labels}}x{{else}}none{{end}}", "none"),
        ('{{join (split .Name "e") "-"}}', "w-b"),
        ("{{.Name | upper}} {{len .IPAM.Config}}", "WEB 2"),
        ('{{printf "%s-%d" .Name 3}}', "web-3"),
        ("{{with .IPAM}}{{len .Config}}{{end}}", "2"),
        ("{{- .Name -}} \n", "web"),
        ("{{.Internal}} {{.Labels}}", "false map[]"),
        ("{{$.Name}}{{range .IPAM.Config}}/{{$.Name}}{{end}}", "web/web/web"),
    ],
)
def test_templates_run_as_go_runs_them(template: str, expected: str) -> None:
    assert formatter.Template(template).execute(VIEW) == expected


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{.Name", "template parsing error: template: :1: unclosed action"),
        ("{{.Nosuch}}", 'executing "" at <.Nosuch>: map has no entry for key "Nosuch"'),
        ("{{range .Name}}{{end}}", "range can't iterate over web"),
        ("{{nosuch .Name}}", 'function "nosuch" not defined'),
        ("{{if .Name}}", "{{if}} has no {{end}}"),
        ("{{end}}", "unexpected {{end}}"),
    ],
)
def test_bad_templates_say_what_is_wrong(template: str, message: str) -> None:
    with pytest.raises(formatter.TemplateError, match="template parsing error") as caught:
        formatter.Template(template).execute(VIEW)
    assert message in str(caught.value)


def test_ls_rows_answer_docker_fields_and_methods() -> None:
    row = NetworkRow(NET, no_trunc=False, plane_status=None)
    template = formatter.Template('{{.ID}} {{.Name}} {{.Label "team"}} {{.CreatedAt}} {{.IPv6}}')
    assert template.execute(row) == (
        "0123456789ab web net 2026-11-29 22:38:20.031058628 +0000 UTC false"
    )
    with pytest.raises(formatter.TemplateError, match="can't evaluate field Nosuch in type"):
        formatter.Template("{{.Nosuch}}").execute(row)
    assert row.to_json()["Labels"] == "team=net,tier=front"
    stopped = NetworkRow(NET, no_trunc=True, plane_status="not running: no agent")
    assert stopped.DataPlane == "kernel (not running)" and len(stopped.ID) == 64


def test_table_format_makes_a_header_and_aligned_columns() -> None:
    fmt = formatter.parse_format("table {{.Name}}\\t{{.Driver}}", "{{.ID}}")
    long = Network(**{**NET.__dict__, "name": "a-very-long-network-name-indeed"})
    out = formatter.render_rows(fmt, [NetworkRow(n, False, None) for n in (NET, long)], {})
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DRIVER"]
    # Docker's tabwriter: columns at least 10 wide, 3 spaces after the longest cell.
    assert [line.index("bridge") for line in lines[1:]] == [34, 34]
    assert lines[0].index("DRIVER") == 34


def test_json_format_is_one_object_per_line() -> None:
    fmt = formatter.parse_format("json", "{{.ID}}")
    out = formatter.render_rows(fmt, [NetworkRow(NET, False, None)] * 2, {})
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 2 and rows[0]["Name"] == "web" and rows[0]["Driver"] == "bridge"
    assert list(rows[0]) == sorted(rows[0])  # Docker marshals the row as a sorted map


def test_tabwriter_never_runs_columns_together() -> None:
    out = formatter.tabwrite(["A\tB\tC", "x" * 40 + "\ty\tz", "short\t" + "q" * 30 + "\tend"])
    for line in out.splitlines():
        cells = [cell for cell in line.split("   ") if cell.strip()]
        assert len(cells) == 3, line


def test_times_as_docker_writes_them() -> None:
    ns = timestamp_ns("2026-11-29T22:38:20.0107241Z")
    assert rfc3339nano(ns) == "2026-11-29T22:38:20.0107241Z"
    assert formatter.go_time(ns) == "2026-11-29 22:38:20.0107241 +0000 UTC"
    # A store written before nanoseconds (isoformat) reads the same way.
    assert timestamp_ns("2026-11-29T22:38:20.010724+00:00") == ns - 100
    assert rfc3339nano(timestamp_ns("2026-11-29T22:38:20Z")) == "2026-11-29T22:38:20Z"


def test_names_sort_naturally() -> None:
    assert sorted(["net10", "net2", "a"], key=natural_key) == ["a", "net2", "net10"]


# --- filters ---------------------------------------------------------------------------------


def _filter(*pairs: str, keys: frozenset[str] = LIST_KEYS) -> NetworkFilter:
    return NetworkFilter.parse([filter_pair(p) for p in pairs], keys)


@pytest.mark.parametrize(
    ("pairs", "in_use", "matches"),
    [
        (("driver=bridge",), False, True),
        (("driver=macvlan",), False, False),
        (("driver=macvlan", "driver=bridge"), False, True),  # values of one key: any
        (("name=we",), False, True),  # regular expression found anywhere
        (("name=^eb",), False, False),
        (("id=0123456789ab",), False, True),
        (("label=team",), False, True),
        (("label=team=net",), False, True),
        (("label=team=ops",), False, False),
        (("label=team", "label=tier=front"), False, True),
        (("label=absent",), False, False),
        (("scope=local",), False, True),
        (("scope=swarm",), False, False),
        (("type=custom",), False, True),
        (("type=builtin",), False, False),  # keelnet makes no built-in networks
        (("dangling=true",), False, True),
        (("dangling=true",), True, False),
        (("dangling=0",), True, True),
        (("driver=bridge", "label=absent"), False, False),  # different keys: all
    ],
)
def test_list_filters_match_as_dockers_do(
    pairs: tuple[str, ...], in_use: bool, matches: bool
) -> None:
    assert _filter(*pairs).matches(NET, in_use) is matches


def test_prune_filters() -> None:
    created = NET.created_ns
    assert _filter(f"until={created // 10**9 + 1}", keys=PRUNE_KEYS).matches(NET, False)
    assert not _filter(f"until={created // 10**9 - 1}", keys=PRUNE_KEYS).matches(NET, False)
    assert not _filter("label!=team", keys=PRUNE_KEYS).matches(NET, False)
    assert _filter("label!=other", keys=PRUNE_KEYS).matches(NET, False)
    assert parse_until("1h30m", now_ns=10**13) == 10**13 - 90 * 60 * 10**9
    assert parse_until("2026-11-29T22:38:20Z") == timestamp_ns("2026-11-29T22:38:20Z")


@pytest.mark.parametrize(
    ("pairs", "keys", "message"),
    [
        (("nosuch=1",), LIST_KEYS, "invalid filter 'nosuch'"),
        (("driver=bridge",), PRUNE_KEYS, "invalid filter 'driver'"),
        (("type=bad",), LIST_KEYS, "invalid filter: 'type'='bad'"),
        (("dangling=maybe",), LIST_KEYS, "invalid value for filter 'dangling'"),
        (("until=soon",), PRUNE_KEYS, "failed to parse value as time or duration"),
    ],
)
def test_bad_filters_are_refused(
    pairs: tuple[str, ...], keys: frozenset[str], message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        _filter(*pairs, keys=keys)


def test_a_filter_without_equals_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["network", "ls", "-f", "driver"])
    assert exited.value.code == 2
    assert "bad format of filter (expected name=value)" in capsys.readouterr().err


# --- flags ------------------------------------------------------------------------------------


def test_go_style_booleans() -> None:
    argv = _go_bools(["network", "create", "--ipv6=true", "--internal=false", "--ipv4=0", "n"])
    assert argv == ["network", "create", "--ipv6", "--no-internal", "--no-ipv4", "n"]
    args = build_parser().parse_args(argv)
    assert (args.ipv6, args.internal, args.ipv4) == (True, False, False)


def test_every_flag_has_help() -> None:
    parser = build_parser()
    pending = [parser]
    seen = 0
    while pending:
        current = pending.pop()
        for action in current._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{current.prog} {action.option_strings} has no help"
                seen += 1
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    pending.append(action.choices[sub])
    assert seen > 30


# --- default routes --------------------------------------------------------------------------


def _candidate(name: str, priority: int = 0, **kw: object) -> Candidate:
    fields = {"internal": False, "via4": "10.0.0.1", "via6": None, **kw}
    return Candidate(f"if-{name}", name, priority=priority, **fields)  # type: ignore[arg-type]


def test_the_default_route_follows_libnetworks_order() -> None:
    a, b = _candidate("a"), _candidate("b")
    assert choose([b, a]) == (a, None)  # equal: network names in order
    high = _candidate("z", priority=5)
    assert choose([a, b, high])[0] is high  # --gw-priority first
    negative = _candidate("a", priority=-1)
    assert choose([negative, b])[0] is b
    dual = _candidate("y", via6="fd::1")
    assert choose([a, dual]) == (dual, dual)  # offering both families comes first
    six_only = _candidate("c", via4=None, via6="fd::1")
    assert choose([a, six_only]) == (a, six_only)  # each family its own first offer
    device = _candidate("d", via4=DEVICE)
    assert choose([device]) == (device, None)
    assert choose([_candidate("i", via4=None)]) == (None, None)


# --- inspect's counts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subnet", "ip_range", "in_use", "available"),
    [
        ("172.20.0.0/16", None, 5, 65531),  # Docker: network, gateway, broadcast, 2 sandboxes
        ("10.0.0.0/24", "10.0.0.128/25", 5, 125),  # the range's broadcast is in use too
        # Docker shows the whole count (a uint64): 18446744073709551612 for a /64.
        ("fd00::/64", None, 4, 2**64 - 4),
        ("fd00::/64", "fd00::100/120", 4, 254),
    ],
)
def test_subnet_status_counts_as_docker_does(
    subnet: str, ip_range: str | None, in_use: int, available: int
) -> None:
    gateway = str(ipaddress.ip_network(subnet).network_address + 1)
    pool = AddressPool(subnet, gateway=gateway, ip_range=ip_range)
    allocated = [pool.allocate(), pool.allocate()]
    status = subnet_status(IpamConfig(subnet, gateway, ip_range), pool, allocated)
    assert status == {"IPsInUse": in_use, "DynamicIPsAvailable": available}


# --- errors and start-up cost ----------------------------------------------------------------


def test_every_exception_is_one_line() -> None:
    assert describe(NetworkNotFound("network x not found")) == "network x not found"
    assert "needs root" in describe(PermissionError(13, "Permission denied", "/var/lib/keelnet"))
    assert (
        describe(OSError(2, "No such file or directory", "/x")) == "No such file or directory: /x"
    )
    odd = describe(ZeroDivisionError("division by zero"))
    assert "ZeroDivisionError" in odd and "KEELNET_DEBUG" in odd and "\n" not in odd


def test_the_cli_loads_nothing_heavy_before_it_must() -> None:
    """What `keelnet --version` and a command for a running agent import: no pyroute2,
    drivers, store, typing or argparse (their import costs more than the command)."""
    probe = (
        "import sys; from keelnet.cli import main; main(['--version']);"
        "from keelnet.cli import _in_agent; _in_agent(['network', 'ls']);"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyroute2', 'typing', 'argparse', 'sqlite3', 'dataclasses') or m in "
        "('keelnet.host', 'keelnet.drivers', 'keelnet.store')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]", out


# --- the systemd units in the package ----------------------------------------------------------


@pytest.mark.parametrize("unit", ["keelnet-agent.service", "keelnet-agent@.service"])
def test_the_packaged_systemd_units_run_the_agent(unit: str, tmp_path: Path) -> None:
    from importlib.resources import files

    from keelnet.cli.agent import run_agent

    text = (files("keelnet") / "systemd" / unit).read_text()
    (exec_start,) = [line for line in text.splitlines() if line.startswith("ExecStart=")]
    program, *argv = shlex.split(exec_start.removeprefix("ExecStart=").replace("%i", "kn-x"))
    assert program == "/usr/local/bin/keelnet"
    assert build_parser().parse_args(argv).standalone is run_agent
    analyze, keelnet = shutil.which("systemd-analyze"), shutil.which("keelnet")
    if analyze and keelnet:  # systemd's own check, with ExecStart where keelnet is here
        local = tmp_path / unit.replace("@", "@kn-x")
        local.write_text(text.replace("/usr/local/bin/keelnet", keelnet))
        checked = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr


# --- the store's migration for sandbox ids and gw-priorities -------------------------------------


def test_sandboxes_of_an_older_store_get_ids(tmp_path: Path) -> None:
    from keelnet.store import sqlite as store_sqlite

    state = tmp_path / "v2"
    state.mkdir()
    db = sqlite3.connect(state / "keelnet.db")
    with db:
        db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL)")
        for step in store_sqlite.MIGRATIONS[:2]:
            step(db)
        db.execute("INSERT INTO meta VALUES ('schema', '2')")
        db.execute("INSERT INTO sandboxes VALUES ('a', '/run/netns/a', 1)")
        db.execute("INSERT INTO sandboxes VALUES ('b', '/run/netns/b', 0)")
    db.close()
    store = store_sqlite.Store(state)
    try:
        a, b = store.sandboxes()
        assert re.fullmatch("[0-9a-f]{64}", a.id) and re.fullmatch("[0-9a-f]{64}", b.id)
        assert a.id != b.id and (a.gw_priorities, b.gw_priorities) == ({}, {})
        found = store.find_sandbox(b.id[:12])
        assert found is not None and found.name == "b"
        assert store.find_sandbox(a.id) == a and store.find_sandbox("a") == a
        assert store.find_sandbox(a.id[:11]) is None  # too short to be an id
        with store.transaction():
            store.set_gw_priority("a", "e1", 5)
            store.set_gw_priority("a", "e2", -1)
            store.set_gw_priority("a", "e1", None)
        assert store.sandboxes()[0].gw_priorities == {"e2": -1}
    finally:
        store.close()


def test_reading_the_store_loads_no_pyroute2() -> None:
    """What `network ls`/`inspect` import when no agent runs: the store, its claim check,
    inspect's view, the CLI's parser; no pyroute2 (~0.1 s), no drivers, and none of what
    only other commands use (sockets, subprocesses, random numbers)."""
    probe = (
        "import sys, keelnet.inspect, keelnet.store.claim, keelnet.kernel.ownership, "
        "keelnet.kernel.namespaces, keelnet.cli.network, keelnet.cli.formatter, "
        "keelnet.cli.root, keelnet.agent, keelnet.sandbox;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('pyroute2', 'socket', 'subprocess', 'secrets') or m in "
        "('keelnet.host', 'keelnet.drivers', 'keelnet.cli.sandbox', 'keelnet.cli.port')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]", out


def test_a_host_without_cluster_store_loads_no_etcd_client() -> None:
    """Opening a Host (the agent's start, a command run without it) imports the etcd
    client (requests, etcd3gw: ~0.1 s) only for a host given a cluster store."""
    probe = (
        "import sys, keelnet.host;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('requests', 'etcd3gw') "
        "or m == 'keelnet.store.etcd_client'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.splitlines()[-1] == "[]", out
