"""Living beside Docker: let keelnet's bridges through an iptables FORWARD policy of DROP.

A packet must be accepted by every base chain on a netfilter hook, so keelnet's nftables
accept cannot override the DROP policy Docker sets on iptables' FORWARD chain. Docker's
documented answer is its `DOCKER-USER` chain: keelnet inserts one jump there (or at the top
of FORWARD when there is no Docker) into its own chain `KEELNET-FORWARD`, which accepts
traffic of keelnet's bridges and leaves traffic to Docker's bridges to Docker's rules.
The real policy for keelnet's traffic stays in keelnet's nftables tables. Docker's own
rules are never changed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from keelnet.errors import KernelError
from keelnet.kernel.namespaces import preexec_setns

CHAIN = "KEELNET-FORWARD"
_DOCKER_BRIDGES = ("docker0", "br-+")
_TOOLS = ("iptables", "ip6tables")


def _run(netns_path: str | None, argv: list[str], stdin: str | None = None) -> tuple[int, str]:
    try:
        result = subprocess.run(
            argv,
            input=stdin.encode() if stdin is not None else None,
            capture_output=True,
            preexec_fn=preexec_setns(netns_path),
            check=False,
        )
    except FileNotFoundError:
        return 127, ""
    return result.returncode, (result.stdout + result.stderr).decode(errors="replace")


def _forward_rules(netns_path: str | None, tool: str) -> list[str] | None:
    code, out = _run(netns_path, [tool, "-w", "-t", "filter", "-S", "FORWARD"])
    return out.splitlines() if code == 0 else None


def sync(netns_path: str | None, bridges: Sequence[str]) -> None:
    """Make the iptables side accept keelnet's `bridges` when its FORWARD policy drops."""
    for tool in _TOOLS:
        forward = _forward_rules(netns_path, tool)
        if forward is None:
            continue
        drops = "-P FORWARD DROP" in forward
        hook = "DOCKER-USER" if _chain_exists(netns_path, tool, "DOCKER-USER") else "FORWARD"
        if not bridges or not drops:
            _remove(netns_path, tool)
            continue
        lines = ["*filter", f":{CHAIN} - [0:0]"]
        lines += [f"-A {CHAIN} -o {name} -j RETURN" for name in _DOCKER_BRIDGES]
        for bridge in bridges:
            lines.append(f"-A {CHAIN} -i {bridge} -j ACCEPT")
            lines.append(f"-A {CHAIN} -o {bridge} -j ACCEPT")
        lines.append("COMMIT")
        code, out = _run(
            netns_path, [f"{tool}-restore", "-w", "--noflush"], "\n".join(lines) + "\n"
        )
        if code != 0:
            raise KernelError(f"{tool}-restore failed: {out.strip()}")
        jump = ["-j", CHAIN]
        if _run(netns_path, [tool, "-w", "-C", hook, *jump])[0] != 0:
            code, out = _run(netns_path, [tool, "-w", "-I", hook, "1", *jump])
            if code != 0:
                raise KernelError(f"{tool}: cannot add jump to {CHAIN}: {out.strip()}")


def _chain_exists(netns_path: str | None, tool: str, chain: str) -> bool:
    return _run(netns_path, [tool, "-w", "-t", "filter", "-S", chain])[0] == 0


def _remove(netns_path: str | None, tool: str) -> None:
    if not _chain_exists(netns_path, tool, CHAIN):
        return
    for hook in ("DOCKER-USER", "FORWARD"):
        # Bounded: one jump per hook is all keelnet ever inserts; repeat a little in case.
        for _ in range(4):
            if _run(netns_path, [tool, "-w", "-D", hook, "-j", CHAIN])[0] != 0:
                break
    _run(netns_path, [tool, "-w", "-F", CHAIN])
    _run(netns_path, [tool, "-w", "-X", CHAIN])
