"""`keelnet agent`: the process that keeps userspace data planes running for CLI users.

A userspace network forwards on Rust threads owned by the process that holds its
:class:`~keelnet.host.Host`. A library user's program is that process; a CLI user's
`keelnet` command exits after each call, so `keelnet agent` holds the Host instead and
serves the CLI over a unix socket in the host's state directory (mode 0600, root only).
While an agent runs, `keelnet` commands for the same namespace and state directory are
executed by it, one at a time, with their output and exit code sent back; without an
agent they run in the calling process as before.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from keelnet.host import Host
from keelnet.store import default_state_dir

SOCKET_NAME = "agent.sock"
MAX_REQUEST = 1 << 20

#: Runs one parsed CLI command against the agent's Host, returns its exit code.
Runner = Callable[[Host, list[str]], int]


def socket_path(netns: str | None, state_dir: str | None) -> Path:
    return (Path(state_dir) if state_dir else default_state_dir(netns)) / SOCKET_NAME


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    size = 0
    while size <= MAX_REQUEST:
        chunk = conn.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def forward(
    netns: str | None, state_dir: str | None, argv: list[str]
) -> tuple[int, str, str] | None:
    """Run `argv` in the agent for this host, if one is serving; None when none is."""
    path = socket_path(netns, state_dir)
    if not path.is_socket():
        return None
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        try:
            conn.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket left by an agent that died: run locally
        conn.sendall(json.dumps({"argv": argv}).encode())
        conn.shutdown(socket.SHUT_WR)
        answer = json.loads(_read_all(conn))
    return int(answer["status"]), str(answer["stdout"]), str(answer["stderr"])


def _answer(host: Host, request: bytes, run: Runner) -> dict[str, object]:
    out, err = io.StringIO(), io.StringIO()
    try:
        argv = json.loads(request)["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        return {"status": 2, "stdout": "", "stderr": f"Error: bad agent request: {exc}\n"}
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = run(host, argv)
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code if isinstance(exc.code, int) else 2
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


def serve(args: argparse.Namespace, run: Runner) -> int:
    """Hold the Host and answer CLI commands until SIGTERM or SIGINT."""
    path = socket_path(args.netns, args.state_dir)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with (
            Host(
                netns=args.netns,
                state_dir=args.state_dir,
                store=args.store,
                dataplane=getattr(args, "dataplane", None),
            ) as host,
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
        ):
            # Opening a Host reconciles only when something calls for it; the agent, which
            # holds it for long, starts from a checked kernel (as dockerd does).
            host.reconcile()
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            server.bind(str(path))
            os.chmod(path, 0o600)
            server.listen(16)
            server.settimeout(0.2)
            print(f"keelnet agent: serving {path}", flush=True)
            try:
                while not stop.is_set():
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        continue
                    with conn:
                        conn.settimeout(30)
                        answer = _answer(host, _read_all(conn), run)
                        conn.sendall(json.dumps(answer).encode())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("keelnet agent: stopped", flush=True)
    return 0
