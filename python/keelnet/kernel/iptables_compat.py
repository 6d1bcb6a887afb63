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


def accept_vtep_taps(netns_path: str | None) -> bool:
    """Where iptables drops forwarded packets by policy (a Docker host), accept what
    keelnet's tunnel TAPs bring in: one jump at the top of DOCKER-USER (or FORWARD) to
    `KEELNET-VTEP`. Idempotent; nothing is written where forwarding is not dropped.
    Returns whether the chain is in place (for `release_vtep_taps` later)."""
    in_place = False
    for tool, saved in _read(netns_path).items():
        if not _drops(saved):
            continue
        in_place = True
        if _jumps(saved, VTEP_CHAIN):
            continue
        _restore(
            netns_path,
            tool,
            [
                f":{VTEP_CHAIN} - [0:0]",
                f"-A {VTEP_CHAIN} -i {VTEP_TAPS} -j ACCEPT",
                f"-I {_hook(saved)} 1 -j {VTEP_CHAIN}",
            ],
        )
    return in_place


def release_vtep_taps(netns_path: str | None) -> None:
    """Removes what `accept_vtep_taps` added; call it once no tunnel TAP is left."""
    for tool, saved in _read(netns_path).items():
        if _has_chain(saved, VTEP_CHAIN):
            _restore(netns_path, tool, _removal(saved, VTEP_CHAIN))


def _restore(netns_path: str | None, tool: str, lines: list[str]) -> None:
    """Applies `lines` to the filter table, leaving everything else as it is."""
    restore = _spawn(netns_path, [f"{tool}-restore", "-w", "--noflush"])
    if restore is None:
        raise KernelError(f"{tool}-restore is missing")
    script = "\n".join(["*filter", *lines, "COMMIT"]) + "\n"
    _, err = restore.communicate(script.encode(), timeout=30)
    if restore.returncode != 0:
        raise KernelError(f"{tool}-restore failed: {err.decode(errors='replace').strip()}")


def _drops(saved: list[str]) -> bool:
    return any(line.startswith(":FORWARD DROP") for line in saved)


def _hook(saved: list[str]) -> str:
    """Where keelnet's chains are jumped to: Docker's DOCKER-USER, else FORWARD."""
    return "DOCKER-USER" if any(line.startswith(":DOCKER-USER ") for line in saved) else "FORWARD"


def _has_chain(saved: list[str], chain: str) -> bool:
    return any(line.startswith(f":{chain} ") for line in saved)


def _jumps(saved: list[str], chain: str) -> list[str]:
    return [line for line in saved if line.endswith(f"-j {chain}")]


def _removal(saved: list[str], chain: str) -> list[str]:
    """The restore lines that delete `chain` and every jump to it."""
    return [line.replace("-A ", "-D ", 1) for line in _jumps(saved, chain)] + [
        f":{chain} - [0:0]",
        f"-X {chain}",
    ]


def _after(saved: list[str], bridges: Sequence[str]) -> list[str]:
    """What `iptables-save` would show of the lines `_plan` looks at after its script ran."""
    kept = [line for line in saved if not line.startswith(f":{CHAIN} ")]
    kept = [line for line in kept if not line.endswith(f"-j {CHAIN}")]
    if bridges and _drops(saved):
        kept += [f":{CHAIN} - [0:0]", f"-A {_hook(saved)} -j {CHAIN}"]
    return kept


def _plan(saved: list[str], bridges: Sequence[str]) -> list[str] | None:
    """The iptables-restore lines for the filter table as `iptables-save` showed it."""
    if not bridges or not _drops(saved):
        return _removal(saved, CHAIN) if _has_chain(saved, CHAIN) else None
    hook = _hook(saved)
    lines = [f":{CHAIN} - [0:0]"]  # declaring it in a restore flushes it
    lines += [f"-A {CHAIN} -o {name} -j RETURN" for name in _DOCKER_BRIDGES]
    for bridge in bridges:
        lines.append(f"-A {CHAIN} -i {bridge} -j ACCEPT")
        lines.append(f"-A {CHAIN} -o {bridge} -j ACCEPT")
    if f"-A {hook} -j {CHAIN}" not in _jumps(saved, CHAIN):
        lines.append(f"-I {hook} 1 -j {CHAIN}")
    return lines
