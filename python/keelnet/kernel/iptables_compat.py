"""Living beside Docker: let keelnet's bridges and VTEPs through an iptables FORWARD
policy of DROP.

A packet must be accepted by every base chain on a netfilter hook, so keelnet's nftables
accept cannot override the DROP policy Docker sets on iptables' FORWARD chain. Docker's
documented answer is its `DOCKER-USER` chain: keelnet inserts one jump there (or at the top
of FORWARD when there is no Docker) into its own chain `KEELNET-FORWARD`, which accepts
traffic of keelnet's bridges and leaves traffic to Docker's bridges to Docker's rules.
The real policy for keelnet's traffic stays in keelnet's nftables tables. Docker's own
rules are never changed.

The VTEPs of keelnet's userspace switch hand TCP super-frames to the host through their
tunnel TAPs (`kn-vtepN`), which the host forwards to the underlay: a second chain,
`KEELNET-VTEP`, accepts what those devices bring in, for as long as any exists.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from keelnet.errors import KernelError
from keelnet.kernel.namespaces import call_in_netns

CHAIN = "KEELNET-FORWARD"
VTEP_CHAIN = "KEELNET-VTEP"
#: The tunnel TAPs of keelnet's VTEPs (named by keelnet-core, io/tunnel_tap.rs).
VTEP_TAPS = "kn-vtep+"
_DOCKER_BRIDGES = ("docker0", "br-+")
_TOOLS = ("iptables", "ip6tables")


def _spawn(netns_path: str | None, argv: list[str]) -> subprocess.Popen[bytes] | None:
    # Spawned from a thread inside the namespace: the child starts there, and no
    # preexec_fn is needed (which would force a slow fork of this process).
    def start() -> subprocess.Popen[bytes] | None:
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        except FileNotFoundError:
            return None

    return call_in_netns(netns_path, start)


class DockerCompat:
    """Keeps the iptables side of one host in step with keelnet's bridges.

    What iptables looks like (FORWARD policy, DOCKER-USER, our chain) is read with
    `iptables-save` on the first sync and whenever `refresh` is asked for (reconcile does);
    in between, syncs only write, and only where the policy drops: network create has a
    latency budget and each iptables process costs milliseconds.
    """

    def __init__(self, netns_path: str | None) -> None:
        self.netns_path = netns_path
        self._saved: dict[str, list[str]] = {}

    def sync(self, bridges: Sequence[str], *, refresh: bool = False) -> None:
        if refresh or not self._saved:
            self._saved = _read(self.netns_path)
        for tool, saved in self._saved.items():
            lines = _plan(saved, bridges)
            if lines is None:
                continue
            try:
                _restore(self.netns_path, tool, lines)
            except KernelError:
                self._saved = {}  # unknown state now: read it again next time
                raise
            self._saved[tool] = _after(saved, bridges)


def _read(netns_path: str | None) -> dict[str, list[str]]:
    """`iptables-save -t filter` per tool found, as lines."""
    saves = {tool: _spawn(netns_path, [f"{tool}-save", "-t", "filter"]) for tool in _TOOLS}
    result = {}
    for tool, process in saves.items():
        if process is None:
            continue
        out, _ = process.communicate(timeout=30)
        if process.returncode == 0:
            result[tool] = out.decode(errors="replace").splitlines()
    return result


def accept_vtep_taps(netns_path: str | None) -> None:
    """Where iptables drops forwarded packets by policy (a Docker host), accept what
    keelnet's tunnel TAPs bring in: one jump at the top of DOCKER-USER (or FORWARD) to
    `KEELNET-VTEP`. Idempotent; nothing is written where forwarding is not dropped."""
    for tool, saved in _read(netns_path).items():
        if not any(line.startswith(":FORWARD DROP") for line in saved):
            continue
        if any(line.endswith(f"-j {VTEP_CHAIN}") for line in saved):
            continue
        hook = (
            "DOCKER-USER" if any(line.startswith(":DOCKER-USER ") for line in saved) else "FORWARD"
        )
        _restore(
            netns_path,
            tool,
            [
                f":{VTEP_CHAIN} - [0:0]",
                f"-A {VTEP_CHAIN} -i {VTEP_TAPS} -j ACCEPT",
                f"-I {hook} 1 -j {VTEP_CHAIN}",
            ],
        )


def release_vtep_taps(netns_path: str | None) -> None:
    """Removes what `accept_vtep_taps` added; call it once no tunnel TAP is left."""
    for tool, saved in _read(netns_path).items():
        if not any(line.startswith(f":{VTEP_CHAIN} ") for line in saved):
            continue
        jumps = [line for line in saved if line.endswith(f"-j {VTEP_CHAIN}")]
        _restore(
            netns_path,
            tool,
            [line.replace("-A ", "-D ", 1) for line in jumps]
            + [f":{VTEP_CHAIN} - [0:0]", f"-X {VTEP_CHAIN}"],
        )


def _restore(netns_path: str | None, tool: str, lines: list[str]) -> None:
    """Applies `lines` to the filter table, leaving everything else as it is."""
    restore = _spawn(netns_path, [f"{tool}-restore", "-w", "--noflush"])
    if restore is None:
        raise KernelError(f"{tool}-restore is missing")
    script = "\n".join(["*filter", *lines, "COMMIT"]) + "\n"
    _, err = restore.communicate(script.encode(), timeout=30)
    if restore.returncode != 0:
        raise KernelError(f"{tool}-restore failed: {err.decode(errors='replace').strip()}")


def _after(saved: list[str], bridges: Sequence[str]) -> list[str]:
    """What `iptables-save` would show of the lines `_plan` looks at after its script ran."""
    kept = [line for line in saved if not line.startswith(f":{CHAIN} ")]
    kept = [line for line in kept if not line.endswith(f"-j {CHAIN}")]
    drops = any(line.startswith(":FORWARD DROP") for line in saved)
    if bridges and drops:
        hook = (
            "DOCKER-USER" if any(line.startswith(":DOCKER-USER ") for line in saved) else "FORWARD"
        )
        kept += [f":{CHAIN} - [0:0]", f"-A {hook} -j {CHAIN}"]
    return kept


def _plan(saved: list[str], bridges: Sequence[str]) -> list[str] | None:
    """The iptables-restore lines for the filter table as `iptables-save` showed it."""
    drops = any(line.startswith(":FORWARD DROP") for line in saved)
    ours = any(line.startswith(f":{CHAIN} ") for line in saved)
    hook = "DOCKER-USER" if any(line.startswith(":DOCKER-USER ") for line in saved) else "FORWARD"
    jumps = [line for line in saved if line.endswith(f"-j {CHAIN}")]
    lines = []
    if not bridges or not drops:
        if not ours:
            return None
        lines += [line.replace("-A ", "-D ", 1) for line in jumps]
        lines += [f":{CHAIN} - [0:0]", f"-X {CHAIN}"]
    else:
        lines.append(f":{CHAIN} - [0:0]")  # declaring it in a restore flushes it
        lines += [f"-A {CHAIN} -o {name} -j RETURN" for name in _DOCKER_BRIDGES]
        for bridge in bridges:
            lines.append(f"-A {CHAIN} -i {bridge} -j ACCEPT")
            lines.append(f"-A {CHAIN} -o {bridge} -j ACCEPT")
        if f"-A {hook} -j {CHAIN}" not in jumps:
            lines.append(f"-I {hook} 1 -j {CHAIN}")
    return lines
