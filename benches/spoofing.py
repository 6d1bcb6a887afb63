"""Spoofing attempts per kind and how many were delivered (issue 10; goal 0), on both
data planes of the bridge and the overlay drivers.

    python benches/spoofing.py [--rounds 20]   (root)

Each data plane gets a throwaway test host (namespaces `kn-sp-…`, removed afterwards)
with the lab of `tests/netns/spooflab.py`: an attacker, a victim and a bystander on a
bridge network under port security (icc=false for the gateway attack), a second network
whose subnet is forged, an "outside" host behind masquerade. Every attack sends its
forged frame `--rounds` times per round; a legitimate control packet along the same way
must arrive before the captures are read. The MAC flood sends 65 600 random source
MACs once. Delivered counts forged frames seen in any other namespace, plus traffic a
forgery would have stolen that reached the attacker.

Overlay: per data plane a one-member etcd and two cluster hosts (namespaces `kn-so-…`),
the attacker's host on that plane and the victim's on the other, one overlay network
(`OverlaySpoofLab`); the same forgeries across VXLAN, and a peer's VTEP sending
`--rounds` VXLAN datagrams to each host that claim one of its sandboxes' MACs (delivered:
a MAC that moved, or traffic for it that went elsewhere); and `--rounds` pairs of
endpoint records forged into etcd as the victim's host's, claiming the address and the
MAC of a sandbox on the attacker's host (delivered: its neighbour then resolved it to
another MAC, or its traffic went elsewhere).
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))

from clusterlab import Cluster, EtcdCluster, Segment
from netlab import Lab, build, remove_prefix
from spooflab import (
    ATTACKS,
    OVERLAY_ATTACKS,
    Outcome,
    OverlaySpoofLab,
    SpoofLab,
    capturing,
    flood,
    random_macs,
    send_udp,
)

import keelnet

FLOOD_MACS = 65_536 + 64
PLANES = ("kernel", "userspace")


def run_plane(dataplane: str, rounds: int, icc: bool, guarded: bool) -> list[Outcome]:
    prefix = f"kn-sp-{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="kn-sp-") as state:
        lab = Lab(prefix, f"{prefix}-host", f"{prefix}-out", Path(state) / "state")
        try:
            build(lab)
            with keelnet.Host(netns=lab.host, state_dir=lab.state_dir) as host:
                options = {} if icc else {"com.docker.network.bridge.enable_icc": "false"}
                if not guarded:
                    options["port_security"] = "false"
                spoof = SpoofLab(lab, host, dataplane, options=options)
                outcomes = [
                    spoof.run(kind, count=rounds)
                    for kind, attack in ATTACKS.items()
                    if attack.icc == icc
                ]
                if icc and guarded:  # without port security the flood is delivered by design
                    outcomes.append(mac_flood(spoof))
                for sandbox in host.sandboxes():
                    host.remove_sandbox(sandbox.name)
                for network in host.networks():
                    host.remove_network(network.name)
            return outcomes
        finally:
            remove_prefix(prefix)


def run_overlay(dataplane: str, rounds: int, guarded: bool) -> list[Outcome]:
    prefix = f"kn-so-{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="kn-so-") as state:
        underlay = Segment(prefix, "sw", "192.0.2.")
        etcd = EtcdCluster(prefix, underlay, Path(state) / "etcd")
        try:
            underlay.create()
            etcd.start()
            with Cluster(etcd, Path(state) / "hosts") as cluster:
                other = "userspace" if dataplane == "kernel" else "kernel"
                hosts = (
                    cluster.add_host(1, dataplane=dataplane),
                    cluster.add_host(2, dataplane=other),
                )
                options = {} if guarded else {"port_security": "false"}
                spoof = OverlaySpoofLab(cluster, hosts, options=options)
                outcomes = [spoof.run(kind, count=rounds) for kind in OVERLAY_ATTACKS]
                outcomes.append(spoof.claim(count=rounds))
                outcomes.append(spoof.record_claims(count=rounds))
            return outcomes  # the cluster removed its sandboxes; etcd goes with its data
        finally:
            etcd.stop()
            remove_prefix(prefix)


def mac_flood(spoof: SpoofLab) -> Outcome:
    places = [(spoof.ns(role), "eth0") for role in ("victim", "bystander")]
    with capturing(places) as captures:
        sent = flood(spoof, random_macs(FLOOD_MACS), b"kn-flood")
        send_udp(spoof.ns("attacker"), spoof.ip("victim"), b"kn-flood-control")
        if not captures[0].wait_for(b"kn-flood-control"):
            raise RuntimeError("the control packet never arrived")
        time.sleep(0.2)
        delivered = sum(capture.count(b"kn-flood") for capture in captures) - 1
    return Outcome("mac_flood", sent, delivered)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=20, help="forged frames per attack")
    parser.add_argument(
        "--without-port-security",
        action="store_true",
        help="the control: networks with -o port_security=false (forgeries get through)",
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("spoofing.py needs root (network namespaces)", file=sys.stderr)
        return 1
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    guarded = not args.without_port_security
    bridge = {
        plane: run_plane(plane, args.rounds, True, guarded)
        + run_plane(plane, args.rounds, False, guarded)
        for plane in PLANES
    }
    overlay = {plane: run_overlay(plane, args.rounds, guarded) for plane in PLANES}
    print_table("bridge", bridge)
    print_table("overlay (attacker's host on the plane, victim's on the other)", overlay)
    everything = [o for runs in (bridge, overlay) for outcomes in runs.values() for o in outcomes]
    delivered = sum(o.delivered for o in everything)
    attempts = sum(o.attempts for o in everything)
    print(f"\n{attempts} forged frames, {delivered} delivered (goal 0), port security {guarded}")
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    return 0 if delivered == 0 or not guarded else 1


def print_table(title: str, results: dict[str, list[Outcome]]) -> None:
    print(f"\n{title}")
    print(f"{'attack':<18}" + "".join(f"{plane + ' sent/delivered':>28}" for plane in PLANES))
    kinds = [outcome.kind for outcome in results[PLANES[0]]]
    for index, kind in enumerate(kinds):
        cells = [results[plane][index] for plane in PLANES]
        print(f"{kind:<18}" + "".join(f"{o.attempts:>20} / {o.delivered:<5}" for o in cells))


if __name__ == "__main__":
    sys.exit(main())
