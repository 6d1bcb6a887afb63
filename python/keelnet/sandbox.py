"""Sandboxes are network namespaces: create, adopt (by path or pid), exec in, delete."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from keelnet.errors import (
    DuplicateSandbox,
    InvalidName,
    InvalidRequest,
    KeelnetError,
    NotFound,
    SandboxNotFound,
)
from keelnet.kernel.namespaces import (
    NETNS_RUN_DIR,
    call_in_netns,
    create_named,
    iproute,
    is_netns,
    netns_path,
    remove_named,
)

if TYPE_CHECKING:  # imported where used: reading a store needs `host_path` only
    import subprocess

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def valid_name(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_name(name: object, what: str = "sandbox") -> None:
    if not valid_name(name):
        raise InvalidName(
            f"invalid {what} name {name!r}: use 1-64 letters, digits, '_', '.' or '-'"
        )


def named_path(name: str) -> str:
    return str(NETNS_RUN_DIR / name)


def create(name: str) -> str:
    """Create the named netns `name` with loopback up; return its path."""
    check_name(name)
    path = named_path(name)
    try:
        create_named(path)
    except FileExistsError:
        raise DuplicateSandbox(f"network namespace {name!r} already exists") from None
    try:
        with iproute(path) as ipr:
            ipr.link("set", index=1, state="up")
    except BaseException:
        delete(path)
        raise
    return path


def resolve(path_or_pid: str | int) -> str:
    """The namespace path of an existing netns given by path, `ip netns` name or pid."""
    if isinstance(path_or_pid, bool) or not isinstance(path_or_pid, str | int):
        raise InvalidRequest(f"a namespace is a path, a name or a pid, not {path_or_pid!r}")
    if isinstance(path_or_pid, int) or path_or_pid.isdigit():
        path = f"/proc/{int(path_or_pid)}/ns/net"
    elif "/" in path_or_pid:
        path = path_or_pid
    else:
        check_name(path_or_pid, "network namespace")
        path = named_path(path_or_pid)
    require(path, SandboxNotFound)
    return path


def host_path(netns: str | None) -> str | None:
    """The path of the host namespace `netns` (an `ip netns` name or a path; None: the
    caller's): NotFound when nothing is there, InvalidRequest for anything else."""
    if netns is None:
        return None
    if not isinstance(netns, str):
        raise InvalidRequest(f"a host namespace is a name or a path, not {netns!r}")
    if "/" not in netns:
        check_name(netns, "host network namespace")
    path = netns_path(netns)
    require(path, NotFound)
    return path


def require(path: str, missing: type[KeelnetError]) -> None:
    """Refuse `path` unless it is a network namespace: `missing` when nothing is there,
    InvalidRequest for a file of another kind."""
    if "\0" in path:
        raise InvalidRequest(f"namespace path {path!r} holds a NUL character")
    if exists(path):
        return
    if os.path.lexists(path):
        raise InvalidRequest(f"{path} is not a network namespace")
    raise missing(f"no network namespace at {path}")


def exists(path: str) -> bool:
    """Whether `path` is a network namespace (a leftover empty file is not)."""
    return is_netns(path)


def delete(path: str) -> None:
    """Remove a named netns created by `create`; a missing one is already removed."""
    remove_named(path)


def _with_etc(path: str, argv: Sequence[str]) -> list[str]:
    """`argv`, run through `ip netns exec` when the named namespace has files under
    /etc/netns/<name> (keelnet's resolv.conf): it mounts them over /etc for the command."""
    import shutil

    name = os.path.basename(path)
    if shutil.which(argv[0]) is None:
        return list(argv)  # let the caller see FileNotFoundError, as without the wrapper
    if os.path.dirname(path) == str(NETNS_RUN_DIR) and os.path.isdir(f"/etc/netns/{name}"):
        return ["ip", "netns", "exec", name, *argv]
    return list(argv)


def exec_in(path: str, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    """Run a command inside the sandbox's network namespace (with its resolv.conf)."""
    if not exists(path):
        raise SandboxNotFound(f"no network namespace at {path!r}")
    import subprocess

    # Started while this thread is in the namespace: the child begins its life there.
    return call_in_netns(path, lambda: subprocess.run(_with_etc(path, argv), **kwargs))


def popen_in(path: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start a command inside the sandbox's network namespace (with its resolv.conf)."""
    if not exists(path):
        raise SandboxNotFound(f"no network namespace at {path!r}")
    import subprocess

    return call_in_netns(path, lambda: subprocess.Popen(_with_etc(path, argv), **kwargs))
