"""keelnet's plugin served in a test's host namespace, and plugin directories of the test's
own (so nothing is written where this machine's dockerd looks for plugins)."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from keelnet.agent import HostThread
from keelnet.host import Host
from keelnet.plugin import protocol
from keelnet.plugin.server import serve


@contextlib.contextmanager
def served_plugin(
    host_netns: str, socket_path: Path, state_dir: Path, *, store: str | None = None
) -> Iterator[None]:
    """keelnet's plugin on `socket_path`, its Host in namespace `host_netns` (a member of
    the cluster `store`, if given), served from a thread of this process until the block
    ends."""
    stop, ready = threading.Event(), threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            owner = HostThread(lambda: Host(netns=host_netns, state_dir=state_dir, store=store))
            try:
                serve(socket_path, owner, stop, ready=ready.set)
            finally:
                owner.close()
        except BaseException as exc:
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(60) and not failed, failed
        yield
    finally:
        stop.set()
        thread.join(60)


def post(socket_path: Path, method: str, body: Any) -> tuple[int, Any]:
    """One raw request, as dockerd sends it: status and decoded answer."""

    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(socket_path))

    connection = Connection("plugin.moby.localhost", timeout=60)
    try:
        payload = b"" if body is None else json.dumps(body).encode()
        connection.request("POST", f"/{method}", body=payload, headers={"Accept": protocol.ACCEPT})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        connection.close()
