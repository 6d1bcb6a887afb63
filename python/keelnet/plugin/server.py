"""`keelnet plugin`: keelnet serving Docker as a network and IPAM plugin on a unix socket.

aiohttp serves HTTP on the socket dockerd finds by name (`/run/docker/plugins/NAME.sock`);
every call runs on one thread that owns the Host (its store and its userspace data
planes), one at a time, in arrival order. `Plugin.Activate` answers `NetworkDriver` and
`IpamDriver`, so `docker network create -d keelnet --ipam-driver keelnet` uses both.
Errors are HTTP 500 with `{"Err": message}` (and `Error`, the IPAM protocol's field), the
message starting with `keelnet:`, so dockerd shows it inside its own error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from keelnet import agent
from keelnet.agent import HostThread
from keelnet.errors import KeelnetError
from keelnet.ipam.allocator import Allocator
from keelnet.plugin import protocol
from keelnet.plugin.ipam import IpamDriverApi, held_in_the_cluster
from keelnet.plugin.network import NetworkDriverApi

#: Largest request accepted (dockerd's are a few kB).
MAX_REQUEST = 1 << 20
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def socket_path(name: str) -> Path:
    return protocol.SOCKET_DIR / f"{name}.sock"


class Dispatcher:
    """`Subsystem.Method` → the API method, run on the Host's thread."""

    def __init__(self, owner: HostThread, record: IO[str] | None = None) -> None:
        self.owner = owner
        self.record = record
        host = owner.host
        allocator = Allocator(host.store, host.subnets_in_use, held_in_the_cluster(host))
        self.apis: dict[str, dict[str, Handler]] = {
            protocol.NETWORK_DRIVER: NetworkDriverApi(host).handlers(),
            protocol.IPAM_DRIVER: IpamDriverApi(allocator).handlers(),
        }

    async def call(self, method: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        started = time.perf_counter()
        status, answer = await self._answer(method, raw)
        if self.record is not None:
            elapsed = (time.perf_counter() - started) * 1000
            self._write_record(method, raw, status, answer, elapsed)
        return status, answer

    async def _answer(self, method: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        if method == "Plugin.Activate":
            return 200, {"Implements": list(self.apis)}
        subsystem, _, name = method.partition(".")
        handler = self.apis.get(subsystem, {}).get(name)
        if handler is None:
            return 404, _error(subsystem, f"keelnet does not implement {method}")
        try:
            body = json.loads(raw) if raw.strip() else {}
        except (ValueError, UnicodeDecodeError) as exc:
            return 400, _error(subsystem, f"keelnet: {method}: the request is not JSON: {exc}")
        if not isinstance(body, dict):
            return 400, _error(subsystem, f"keelnet: {method}: the request must be an object")
        loop = asyncio.get_running_loop()
        try:
            return 200, await loop.run_in_executor(self.owner.executor, handler, body)
        except KeelnetError as exc:
            return 500, _error(subsystem, f"keelnet: {exc}")
        except Exception as exc:  # a bug: say so, keep serving
            traceback.print_exc(file=sys.stderr)
            return 500, _error(subsystem, f"keelnet: internal error in {method}: {exc!r}")

    def _write_record(
        self, method: str, raw: bytes, status: int, answer: dict[str, Any], ms: float
    ) -> None:
        assert self.record is not None
        try:
            request = json.loads(raw) if raw.strip() else None
        except ValueError:
            request = raw.decode(errors="replace")
        entry = {
            "method": method,
            "request": request,
            "status": status,
            "answer": answer,
            "ms": round(ms, 3),
        }
        self.record.write(json.dumps(entry) + "\n")
        self.record.flush()


def _error(subsystem: str, message: str) -> dict[str, Any]:
    # The IPAM protocol's field is Error; dockerd's plugin client reads Err on non-200.
    return (
        {"Err": message, "Error": message}
        if subsystem == protocol.IPAM_DRIVER
        else {"Err": message}
    )


def build_app(dispatcher: Dispatcher) -> web.Application:
    async def handle(request: web.Request) -> web.Response:
        status, answer = await dispatcher.call(request.match_info["method"], await request.read())
        return web.json_response(answer, status=status, content_type=protocol.CONTENT_TYPE)

    app = web.Application(client_max_size=MAX_REQUEST)
    app.router.add_post("/{method}", handle)
    return app


def claim_socket(path: Path) -> None:
    """Make way for our socket at `path`: refuse when a live server answers there (another
    plugin of that name), remove one a dead server left."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    if not path.exists() and not path.is_symlink():
        return
    if not path.is_socket():
        raise KeelnetError(f"{path} exists and is not a socket; remove it or choose another name")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            path.unlink(missing_ok=True)  # left by a plugin that died
            return
    raise KeelnetError(f"another plugin already serves {path}")


def serve(
    path: Path,
    owner: HostThread,
    stop: threading.Event,
    *,
    ready: Callable[[], None] | None = None,
    record: IO[str] | None = None,
) -> None:
    """Serve the plugin at `path` on `owner`'s Host until `stop` is set."""
    claim_socket(path)
    asyncio.run(_serve(path, Dispatcher(owner, record), stop, ready))


async def _serve(
    path: Path, dispatcher: Dispatcher, stop: threading.Event, ready: Callable[[], None] | None
) -> None:
    runner = web.AppRunner(build_app(dispatcher), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.UnixSite(runner, str(path))
        await site.start()
        os.chmod(path, 0o600)  # whoever may talk to it may reconfigure the host's network
        protocol.served_here[f"unix://{path}"] = dispatcher.owner.thread_id
        if ready is not None:
            ready()
        while not stop.is_set():
            await asyncio.sleep(0.1)
    finally:
        protocol.served_here.pop(f"unix://{path}", None)
        await runner.cleanup()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def beside_agent(path: Path, record: IO[str] | None = None) -> agent.Beside:
    """The plugin served from a thread of the agent, on the agent's Host: what `keelnet
    plugin` runs. It stops the agent if it fails."""

    def start(owner: HostThread, stop: threading.Event) -> Callable[[], None]:
        claim_socket(path)
        ready = threading.Event()
        failed: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(_serve(path, Dispatcher(owner, record), stop, ready.set))
            except BaseException as exc:
                failed.append(exc)
                traceback.print_exc(file=sys.stderr)
                stop.set()  # the agent goes with its plugin: a half-served Docker is worse
                ready.set()

        thread = threading.Thread(target=run, name="keelnet-plugin", daemon=True)
        thread.start()
        ready.wait()
        if failed:
            thread.join(30)
            raise failed[0]
        print(f"keelnet plugin: serving {path}", flush=True)
        return lambda: thread.join(60)

    return start


def run(
    name: str,
    *,
    netns: str | None = None,
    state_dir: str | None = None,
    path: Path | None = None,
    record: Path | None = None,
    commands: agent.Runner,
    store: str | None = None,
    dataplane: str | None = None,
) -> int:
    """`keelnet plugin`: the agent of the host's store, serving the Docker plugin beside
    keelnet's own commands, until SIGTERM, SIGINT or `keelnet agent stop`. `store` and
    `dataplane`: the agent's (a cluster store for global networks, and what this host
    runs for them)."""
    path = path or socket_path(name)
    with contextlib.ExitStack() as files:
        log = files.enter_context(record.open("a")) if record is not None else None
        return agent.serve(
            netns,
            state_dir,
            commands,
            store=store,
            dataplane=dataplane,
            beside=beside_agent(path, log),
        )
