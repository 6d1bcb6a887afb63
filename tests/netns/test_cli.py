"""The keelnet CLI end to end, as a Docker user would drive it (compared with what
`docker network ...` prints: columns, formats, filters, prompts, errors and exit codes)."""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from miniplugin import MiniPlugin
from netlab import OUTSIDE_ADDRESS, Lab
from nettools import TcpServer, ping, tcp_request
from pyroute2 import IPRoute

from keelnet.kernel import ownership
from keelnet.kernel.namespaces import iproute, netns_path
from keelnet.plugin.protocol import PLUGIN_DIR_VARIABLE
from keelnet.store import Store

KEELNET = [sys.executable, "-m", "keelnet.cli"]


def keelnet_cli(lab: Lab, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEELNET, "--netns", lab.host, "--state-dir", str(lab.state_dir), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
    )


def ok(lab: Lab, *argv: str) -> str:
    result = keelnet_cli(lab, *argv)
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def default_routes(sandbox: str) -> dict[int, list[tuple[str | None, str]]]:
    """The sandbox's default routes by family: (gateway or None, interface)."""
    routes: dict[int, list[tuple[str | None, str]]] = {4: [], 6: []}
    with iproute(netns_path(sandbox)) as ipr:
        names = {link["index"]: link.get("ifname") for link in ipr.link("dump")}
        for route in ipr.route("dump"):
            if route["dst_len"] == 0 and route["table"] == 254 and route["type"] == 1:
                family = 6 if route["family"] == socket.AF_INET6 else 4
                multipath = route.get("multipath") or [{"oif": route.get("oif"), **{}}]
                for hop in multipath:
                    gateway = route.get("gateway") or hop.get("gateway")
                    routes[family].append((gateway, names.get(hop.get("oif") or route.get("oif"))))
    return routes


def test_cli_network_lifecycle(lab: Lab) -> None:
    sandbox = lab.name("web")
    created = ok(
        lab,
        "network",
        "create",
        "--subnet",
        "10.95.0.0/24",
        "--label",
        "team=net",
        "-o",
        "com.docker.network.driver.mtu=1400",
        "front",
    )
    network_id = created.strip()
    assert len(network_id) == 64

    listed = ok(lab, "network", "ls", "--format", "json")
    assert [json.loads(line)["Name"] for line in listed.splitlines()] == ["front"]

    sandbox_id = ok(lab, "sandbox", "create", sandbox).strip()  # as `docker create`: the id
    assert re.fullmatch("[0-9a-f]{64}", sandbox_id)
    # A sandbox answers to its name, its id and a 12-digit prefix of it.
    ok(lab, "network", "connect", "--ip", "10.95.0.50", "front", sandbox_id[:12])
    inspected = json.loads(ok(lab, "network", "inspect", "front"))
    assert inspected[0]["Id"] == network_id
    assert inspected[0]["Labels"] == {"team": "net"}
    # Containers keyed by the sandbox's id (Docker: the container's), the name inside.
    assert list(inspected[0]["Containers"]) == [sandbox_id]
    container = inspected[0]["Containers"][sandbox_id]
    assert container["Name"] == sandbox and container["IPv4Address"] == "10.95.0.50/24"

    listed = ok(lab, "sandbox", "ls", "--format", "json")
    (row,) = [json.loads(line) for line in listed.splitlines()]
    assert row["Name"] == sandbox and row["Networks"]["front"]["IPAddress"] == "10.95.0.50"
    assert row["ID"] == sandbox_id
    table = ok(lab, "sandbox", "ls").splitlines()
    assert table[0].split() == ["SANDBOX", "ID", "NAME", "NETWORKS", "PATH"]
    assert table[1].split()[:3] == [sandbox_id[:12], sandbox, "front"]
    shown = ok(lab, "sandbox", "exec", sandbox, "--", "ip", "-4", "-o", "addr")
    assert "10.95.0.50/24" in shown

    assert ok(lab, "port", "publish", "front", sandbox, "8080:80") == "80/tcp -> 0.0.0.0:8080\n"
    assert ok(lab, "port", "ls", "--format", "{{.Sandbox}} {{.HostPort}}") == f"{sandbox} 8080\n"
    with TcpServer(sandbox, "0.0.0.0", 80, "cli"):
        assert tcp_request(lab.outside, "192.0.2.1", 8080, "q") == f"cli q from {OUTSIDE_ADDRESS}"
    ok(lab, "port", "unpublish", "front", sandbox, "8080:80")

    busy = keelnet_cli(lab, "network", "rm", "front")
    assert busy.returncode == 1 and "active endpoints" in busy.stderr
    ok(lab, "network", "disconnect", "front", sandbox)
    ok(lab, "sandbox", "rm", sandbox)
    ok(lab, "network", "create", "spare", "--subnet", "10.96.0.0/24")
    pruned = ok(lab, "network", "prune", "-f")
    assert pruned == "Deleted Networks:\nfront\nspare\n\n"  # Docker's shape, blank line too
    assert ok(lab, "network", "ls", "-q") == ""


def test_ls_columns_formats_and_filters(lab: Lab) -> None:
    long_name = "a-network-with-a-rather-long-name"
    ids = {}
    for name, subnet, extra in [
        ("net10", "10.61.0.0/24", ["--label", "tier=back"]),
        ("net2", "10.62.0.0/24", ["--label", "tier=front", "--internal"]),
        (long_name, "10.63.0.0/24", []),
    ]:
        ids[name] = ok(lab, "network", "create", "--subnet", subnet, *extra, name).strip()
    table = ok(lab, "network", "ls").splitlines()
    assert table[0].split() == ["NETWORK", "ID", "NAME", "DRIVER", "SCOPE", "DATAPLANE"]
    # Natural order (net2 before net10); every column starts where its header does.
    assert [line.split()[1] for line in table[1:]] == [long_name, "net2", "net10"]
    for column in ("NAME", "DRIVER", "SCOPE", "DATAPLANE"):
        start = table[0].index(column)
        assert all(line[start - 1] == " " and line[start] != " " for line in table[1:]), column
    assert table[1].split()[0] == ids[long_name][:12]

    assert ok(lab, "network", "ls", "-q", "--no-trunc").split() == [
        ids[long_name],
        ids["net2"],
        ids["net10"],
    ]
    custom = ok(lab, "network", "ls", "--format", "table {{.Name}}\\t{{.Internal}}").splitlines()
    assert custom[0].split() == ["NAME", "INTERNAL"] and custom[2].split() == ["net2", "true"]
    assert ok(lab, "network", "ls", "--format", '{{.Name}}={{.Label "tier"}}').split() == [
        f"{long_name}=",
        "net2=front",
        "net10=back",
    ]
    lines = ok(lab, "network", "ls", "--format", "json").splitlines()
    first = json.loads(lines[0])
    assert len(lines) == 3 and first["Name"] == long_name and first["Scope"] == "local"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? \+0000 UTC", first["CreatedAt"])

    def names(*filters: str) -> list[str]:
        argv = [part for f in filters for part in ("-f", f)]
        return ok(lab, "network", "ls", "--format", "{{.Name}}", *argv).split()

    assert names("label=tier") == ["net2", "net10"]
    assert names("label=tier=front") == ["net2"]
    assert names("name=net1") == ["net10"]
    assert names("name=^a-", "name=net2") == [long_name, "net2"]
    assert names("id=" + ids["net10"][:6]) == ["net10"]
    assert names("driver=bridge", "label=tier=back") == ["net10"]
    assert names("driver=macvlan") == []
    assert names("dangling=true") == [long_name, "net2", "net10"]
    assert names("type=builtin") == []

    bad = keelnet_cli(lab, "network", "ls", "-f", "nosuch=1")
    assert bad.returncode == 1 and bad.stderr.startswith("Error: invalid filter 'nosuch'")
    usage = keelnet_cli(lab, "network", "ls", "-f", "driver")
    assert usage.returncode == 2 and "bad format of filter (expected name=value)" in usage.stderr
    template = keelnet_cli(lab, "network", "ls", "--format", "{{.Nosuch}}")
    assert template.returncode == 1
    assert "can't evaluate field Nosuch" in template.stderr
    assert len(template.stderr.splitlines()) == 1


def test_inspect_formats_and_missing_networks(lab: Lab) -> None:
    sandbox = lab.name("i")
    ok(lab, "network", "create", "--subnet", "10.64.0.0/24", "--ip-range", "10.64.0.128/25", "a")
    ok(lab, "sandbox", "create", sandbox)
    ok(lab, "network", "connect", "a", sandbox)

    both = keelnet_cli(lab, "network", "inspect", "a", "nosuch")
    assert both.returncode == 1
    assert [n["Name"] for n in json.loads(both.stdout)] == ["a"]  # what was found, then
    assert both.stderr == "Error: network nosuch not found\n"  # the error
    (found,) = json.loads(both.stdout)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{1,9}Z", found["Created"])
    # Dynamic addresses come from the /25: 128 - broadcast - the sandbox's.
    assert found["Status"]["IPAM"]["Subnets"]["10.64.0.0/24"] == {
        "IPsInUse": 4,
        "DynamicIPsAvailable": 126,
    }
    assert found["IPAM"]["Config"] == [
        {"Subnet": "10.64.0.0/24", "IPRange": "10.64.0.128/25", "Gateway": "10.64.0.1"}
    ]

    template = "{{.Name}} {{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{len .Containers}}"
    assert ok(lab, "network", "inspect", "-f", template, "a") == "a 10.64.0.0/24 10.64.0.1 1\n"
    compact = ok(lab, "network", "inspect", "--format", "json", "a")
    assert compact.count("\n") == 1 and json.loads(compact)[0]["Name"] == "a"
    assert json.loads(ok(lab, "network", "inspect", "-v", "a"))[0]["Name"] == "a"
    missing = keelnet_cli(lab, "network", "inspect", "-f", "{{.Name}}", "a", "gone", "a")
    assert missing.returncode == 1 and missing.stdout == "a\na\n"
    assert missing.stderr == "Error: network gone not found\n"


def test_prune_asks_first_and_filters(lab: Lab) -> None:
    ok(lab, "network", "create", "--subnet", "10.65.0.0/24", "--label", "keep=yes", "kept")
    ok(lab, "network", "create", "--subnet", "10.66.0.0/24", "gone")
    declined = keelnet_cli(lab, "network", "prune", stdin="n\n")
    assert declined.returncode == 0
    assert declined.stdout == (
        "WARNING! This will remove all custom networks not used by at least one sandbox.\n"
        "Are you sure you want to continue? [y/N] "
    )
    assert ok(lab, "network", "ls", "-q").count("\n") == 2
    nothing = keelnet_cli(lab, "network", "prune")  # stdin at EOF: no
    assert nothing.returncode == 0 and ok(lab, "network", "ls", "-q").count("\n") == 2
    accepted = keelnet_cli(lab, "network", "prune", "--filter", "label!=keep", stdin="y\n")
    assert accepted.returncode == 0 and accepted.stdout.endswith("Deleted Networks:\ngone\n\n")
    assert ok(lab, "network", "ls", "--format", "{{.Name}}") == "kept\n"
    refused = keelnet_cli(lab, "network", "prune", "-f", "--filter", "driver=bridge")
    assert refused.returncode == 1 and "invalid filter 'driver'" in refused.stderr


def test_errors_are_one_line_that_say_what_to_do(lab: Lab) -> None:
    ok(lab, "network", "create", "--subnet", "10.97.0.0/24", "n")
    for argv, text in [
        (("network", "create", "n"), "network with name n already exists"),
        (("network", "create", "-d", "nosuch", "m"), "drivers: bridge, host, ipvlan, macvlan"),
        (
            ("network", "create", "--subnet", "10.97.0.0/25", "m"),
            "overlaps with 10.97.0.0/24 of network n",
        ),
        (("network", "create", "--subnet", "10.1.2.3/24", "m"), "did you mean 10.1.2.0/24?"),
        (("network", "create", "--gateway", "10.1.2.1", "m"), "a gateway needs a subnet"),
        (("network", "create", "--ip-range", "10.1.2.0/25", "m"), "an IP range needs a subnet"),
        (("network", "create", "--subnet", "bogus", "m"), "such as 10.1.2.0/24"),
        (("network", "create", "--ipv4=false", "m"), "IPv4 or IPv6 must be enabled"),
        (
            ("network", "create", "--ipv6", "--ipv4=false", "-d", "host", "m"),
            "driver 'host' makes no IPv6-only networks",
        ),
        (
            ("network", "create", "--ipv6", "--ipv4=false", "--subnet", "10.1.2.0/24", "m"),
            "IPv4 subnet 10.1.2.0/24 given but IPv4 is disabled",
        ),
        (("network", "create", "--scope", "swarm", "m"), 'scope "swarm" needs Docker\'s swarm'),
        (("network", "create", "--scope", "global", "m"), 'driver bridge makes "local" networks'),
        (
            ("network", "create", "-d", "overlay", "--scope", "local", "m"),
            'driver overlay makes "global" networks, not "local"',
        ),
        (("network", "create", "--config-only", "m"), "no configuration-only networks"),
        (("network", "create", "--ipam-driver", "x", "m"), 'IPAM driver "x" not found'),
        (("network", "create", "--ipam-driver", "external", "m"), 'use "default" or'),
        (("network", "rm", "ghost"), "network ghost not found"),
        (("network", "connect", "n", "ghost"), "ghost"),
        (("network", "connect", "--driver-opt", "x=1", "n", "ghost"), "unknown endpoint option"),
        (("port", "publish", "n", "x", "nonsense"), "port mapping"),
        (("sandbox", "exec", "ghost", "--", "true"), "no such sandbox: ghost"),
    ]:
        result = keelnet_cli(lab, *argv)
        assert result.returncode == 1, argv
        assert result.stderr.startswith("Error: ") and text in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert keelnet_cli(lab, "network", "rm", "-f", "ghost").returncode == 0
    assert ok(lab, "network", "ls", "--format", "{{.Name}}") == "n\n"  # nothing half-made


def test_one_default_route_per_sandbox_as_docker_picks_it(lab: Lab) -> None:
    sandbox = lab.name("gw")
    ok(lab, "sandbox", "create", sandbox)
    ok(lab, "network", "create", "--subnet", "10.71.0.0/24", "zeta")
    ok(
        lab,
        "network",
        "create",
        "--ipv6",
        "--subnet",
        "10.72.0.0/24",
        "--subnet",
        "fd71::/64",
        "beta",
    )
    ok(lab, "network", "create", "--subnet", "10.73.0.0/24", "--internal", "alpha")

    ok(lab, "network", "connect", "zeta", sandbox)
    assert default_routes(sandbox) == {4: [("10.71.0.1", "eth0")], 6: []}
    ok(lab, "network", "connect", "alpha", sandbox)  # internal: offers no gateway
    assert default_routes(sandbox) == {4: [("10.71.0.1", "eth0")], 6: []}
    # beta offers both families: it comes first in libnetwork's order.
    ok(lab, "network", "connect", "beta", sandbox)
    assert default_routes(sandbox) == {4: [("10.72.0.1", "eth2")], 6: [("fd71::1", "eth2")]}
    # A higher --gw-priority wins whatever else: zeta takes IPv4, IPv6 stays with beta.
    ok(lab, "network", "disconnect", "zeta", sandbox)
    ok(lab, "network", "connect", "--gw-priority", "10", "zeta", sandbox)
    assert default_routes(sandbox) == {4: [("10.71.0.1", "eth0")], 6: [("fd71::1", "eth2")]}
    # ...and is kept with the sandbox: another connect leaves it where it is.
    ok(lab, "network", "disconnect", "alpha", sandbox)
    ok(lab, "network", "connect", "alpha", sandbox)
    assert default_routes(sandbox) == {4: [("10.71.0.1", "eth0")], 6: [("fd71::1", "eth2")]}
    ok(lab, "network", "disconnect", "zeta", sandbox)
    ok(lab, "network", "connect", "zeta", sandbox)  # no priority now: beta's again
    # The network that gives the routes leaves: the next one takes over, for each family.
    ok(lab, "network", "disconnect", "beta", sandbox)
    assert default_routes(sandbox) == {4: [("10.71.0.1", "eth0")], 6: []}
    ok(lab, "network", "disconnect", "zeta", sandbox)
    assert default_routes(sandbox) == {4: [], 6: []}  # alpha is internal: none at all


def test_connect_takes_ipv6_and_interface_name(lab: Lab) -> None:
    sandbox = lab.name("six")
    ok(lab, "sandbox", "create", sandbox)
    ok(lab, "network", "create", "--ipv6", "--subnet", "10.74.0.0/24", "--subnet", "fd74::/64", "d")
    ok(
        lab,
        "network",
        "connect",
        "--ip",
        "10.74.0.9",
        "--ip6",
        "fd74::9",
        "--driver-opt",
        "com.docker.network.endpoint.ifname=lan0",
        "d",
        sandbox,
    )
    with iproute(netns_path(sandbox)) as ipr:
        (index,) = ipr.link_lookup(ifname="lan0")
        addresses = {a.get("address") for a in ipr.addr("dump", index=index)}
    assert {"10.74.0.9", "fd74::9"} <= addresses
    (container,) = json.loads(ok(lab, "network", "inspect", "d"))[0]["Containers"].values()
    assert container["IPv6Address"] == "fd74::9/64"
    assert ipaddress.ip_interface(container["IPv4Address"]).ip == ipaddress.ip_address("10.74.0.9")


def test_an_unusable_state_dir_is_one_line(lab: Lab, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    for state_dir in (str(blocker), str(blocker / "below")):
        for argv in (
            ["network", "ls"],
            ["network", "create", "x"],
            ["sandbox", "exec", "s", "true"],
        ):
            result = subprocess.run(
                [*KEELNET, "--netns", lab.host, "--state-dir", state_dir, *argv],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 1, (state_dir, argv)
            assert result.stderr.startswith("Error: ") and "Traceback" not in result.stderr
            assert len(result.stderr.splitlines()) == 1, result.stderr


def sandbox_addresses(sandbox: str, ifname: str = "eth0") -> set[str]:
    """The addresses on the sandbox's interface, as "address/prefix"."""
    with iproute(netns_path(sandbox)) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        return {f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=index)}


def test_a_docker_ipam_plugin_gives_the_addresses(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--ipam-driver PLUGIN`: pools and addresses from an independent IPAM plugin, found
    as dockerd finds plugins (in $KEELNET_PLUGIN_DIR here: the agent that the first
    command starts looks there too), with `--ipam-opt` sent along and shown by inspect."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    monkeypatch.setenv(PLUGIN_DIR_VARIABLE, str(plugins))
    name, box = f"{lab.prefix}-ipam", lab.name("pooled")
    with MiniPlugin(plugins / f"{name}.sock", lab.host) as mini:
        ok(lab, "network", "create", "--ipam-driver", name, "--ipam-opt", "flavour=mini", "pool")
        (view,) = json.loads(ok(lab, "network", "inspect", "pool"))
        assert view["IPAM"] == {
            "Driver": name,
            "Options": {"flavour": "mini"},
            "Config": [{"Subnet": "10.97.0.0/24", "Gateway": "10.97.0.1"}],
        }
        ok(lab, "sandbox", "create", box)
        ok(lab, "network", "connect", "pool", box)
        assert "10.97.0.2/24" in sandbox_addresses(box)
        assert ping(box, "10.97.0.1")  # keelnet's bridge holds the gateway the plugin gave
        asked = [body for method, body in mini.requests if method == "IpamDriver.RequestPool"]
        assert [body["Options"] for body in asked] == [{"flavour": "mini"}]
        ok(lab, "network", "disconnect", "pool", box)
        ok(lab, "network", "rm", "pool")
        assert mini.pools == {}  # everything given back
    # Nothing is made when the plugin is not there.
    gone = keelnet_cli(lab, "network", "create", "--ipam-driver", name, "pool")
    assert gone.returncode == 1 and f'IPAM driver "{name}" not found' in gone.stderr
    assert ok(lab, "network", "ls", "-q") == ""


def test_an_ipv6_only_network(lab: Lab) -> None:
    """`--ipv6 --ipv4=false` (Docker 28): no IPv4 subnet, gateway or address anywhere;
    sandboxes reach each other, their gateway and each other's names over IPv6."""
    a, b = lab.name("six-a"), lab.name("six-b")
    ok(
        lab,
        "network",
        "create",
        "--ipv6",
        "--ipv4=false",
        "--subnet",
        "fd00:6:1::/64",
        "--scope",
        "local",
        "six",
    )
    (view,) = json.loads(ok(lab, "network", "inspect", "six"))
    assert (view["EnableIPv4"], view["EnableIPv6"]) == (False, True)
    assert view["IPAM"]["Config"] == [{"Subnet": "fd00:6:1::/64", "Gateway": "fd00:6:1::1"}]
    listed = ok(lab, "network", "ls", "--format", "{{.Name}} {{.IPv4}} {{.IPv6}}")
    assert listed == "six false true\n"
    for box in (a, b):
        ok(lab, "sandbox", "create", box)
        ok(lab, "network", "connect", "six", box)
    assert {x for x in sandbox_addresses(a) if not x.startswith("fe80:")} == {"fd00:6:1::2/64"}
    assert default_routes(a) == {4: [], 6: [("fd00:6:1::1", "eth0")]}
    with iproute(netns_path(lab.host)) as ipr:
        bridge = ipr.link_lookup(ifname=f"kn-{view['Id'][:12]}")[0]
        assert not ipr.get_addr(index=bridge, family=socket.AF_INET)
    assert ping(a, "fd00:6:1::3") and ping(a, "fd00:6:1::1")
    # The embedded DNS server answers a name on an IPv6-only network with its IPv6 address.
    found = ok(lab, "sandbox", "exec", a, "--", "getent", "ahosts", b)
    assert found.split()[0] == "fd00:6:1::3"
    # Without a subnet, one is carved from the default IPv6 pools, still with no IPv4.
    ok(lab, "network", "create", "--ipv6", "--ipv4=false", "carved")
    (carved,) = json.loads(ok(lab, "network", "inspect", "carved"))
    (config,) = carved["IPAM"]["Config"]
    assert ipaddress.ip_network(config["Subnet"]).version == 6 and not carved["EnableIPv4"]
    ok(lab, "sandbox", "create", lab.name("six-c"))
    refused = keelnet_cli(lab, "network", "connect", "--ip", "10.0.0.5", "six", lab.name("six-c"))
    assert refused.returncode == 1 and "six has no IPv4 subnet" in refused.stderr


def _leak(ipr: IPRoute, name: str, group: int, alias: str | None) -> None:
    """A link as a store leaves one: in its device group, with its alias (or none yet)."""
    ipr.link("add", ifname=name, kind="bridge", group=group)
    if alias is not None:
        ipr.link("set", index=ipr.link_lookup(ifname=name)[0], ifalias=alias)


def _links(netns: str) -> set[str]:
    with iproute(netns_path(netns)) as ipr:
        return {str(link.get("ifname")) for link in ipr.link("dump")}


def test_system_reconcile_removes_this_stores_leftovers_only(lab: Lab) -> None:
    """`keelnet system reconcile`: links marked as this store's that nothing it holds
    accounts for go, in the host's namespace and in sandboxes, whether this process or the
    agent runs it; another store's links, and unmarked ones, stay."""
    box = lab.name("rc")
    ok(lab, "sandbox", "create", box)  # the store holds something: no agent needed yet
    store = Store(lab.state_dir)
    try:
        ours = ownership.Owner(store.store_id)
    finally:
        store.close()
    theirs = ownership.Owner(ownership.new_store_id())
    with iproute(netns_path(lab.host)) as ipr:
        _leak(ipr, "kn-lk-ours", ours.group, ours.alias(secrets.token_hex(32)))
        _leak(ipr, "kn-lk-half", ours.group, None)  # its maker died before the alias
        _leak(ipr, "kn-lk-theirs", theirs.group, theirs.alias(secrets.token_hex(32)))
        # Another store whose group is ours by chance: its alias says whose it is.
        _leak(ipr, "kn-lk-clash", ours.group, theirs.alias(secrets.token_hex(32)))
        _leak(ipr, "kn-lk-plain", 0, None)
    assert ok(lab, "system", "reconcile") == (
        "leaked interfaces removed from the host's namespace: 2\n"
    )
    left = _links(lab.host)
    assert {"kn-lk-theirs", "kn-lk-clash", "kn-lk-plain"} <= left
    assert not {"kn-lk-ours", "kn-lk-half"} & left

    # With a network the agent runs (its DNS): the agent's Host reconciles.
    ok(lab, "network", "create", "--subnet", "10.74.0.0/24", "kept")
    ok(lab, "network", "connect", "kept", box)
    (view,) = json.loads(ok(lab, "network", "inspect", "kept"))
    with iproute(netns_path(box)) as ipr:
        _leak(ipr, "lk0", ours.group, ours.alias(view["Id"], secrets.token_hex(32)))
        _leak(ipr, "lk1", theirs.group, theirs.alias(view["Id"], secrets.token_hex(32)))
    with iproute(netns_path(lab.host)) as ipr:
        _leak(ipr, "kn-lk-ours2", ours.group, ours.alias(secrets.token_hex(32)))
    assert (lab.state_dir / "agent.sock").is_socket()
    assert ok(lab, "system", "reconcile") == (
        "leaked interfaces removed from the host's namespace: 1\n"
        "leaked interfaces removed from sandboxes: 1\n"
    )
    assert "lk0" not in _links(box) and "lk1" in _links(box)
    assert "kn-lk-ours2" not in _links(lab.host)
    assert {"kn-lk-theirs", "kn-lk-clash", "kn-lk-plain"} <= _links(lab.host)
    assert ping(box, "10.74.0.1")  # what the store holds is untouched
    assert ok(lab, "system", "reconcile") == "nothing to do: the kernel matches the store\n"
