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
import concurrent.futures
import contextlib
import json
import os
import socket
import sys
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from aiohttp import web

from keelnet import agent
from keelnet.errors import KeelnetError
from keelnet.host import Host
from keelnet.ipam.allocator import Allocator
from keelnet.plugin import protocol
from keelnet.plugin.ipam import IpamDriverApi
from keelnet.plugin.network import NetworkDriverApi

#: Largest request accepted (dockerd's are a few kB).
MAX_REQUEST = 1 << 20
Handler = Callable[[dict[str, Any]], dict[str, Any]]


def socket_path(name: str) -> Path:
    return protocol.SOCKET_DIR / f"{name}.sock"


class HostThread:
    """The one thread that opens, uses and closes the plugin's Host (its SQLite
    connection belongs to the thread that made it)."""

    def __init__(self, open_host: Callable[[], Host]) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keelnet-host")
        try:
            self.host = self.executor.submit(open_host).result()
            self.thread_id = self.executor.submit(threading.get_ident).result()
        except BaseException:
            self.executor.shutdown()
            raise

    def close(self) -> None:
        try:
            self.executor.submit(self.host.close).result()
        finally:
            self.executor.shutdown()


class Dispatcher:
    """`Subsystem.Method` → the API method, run on the Host's thread."""

    def __init__(self, owner: HostThread, record: IO[str] | None = None) -> None:
        self.owner = owner
        self.record = record
        host = owner.host
        allocator = Allocator(host.store, host.subnets_in_use)
        self.apis: dict[str, dict[str, Handler]] = {
            protocol.NETWORK_DRIVER: NetworkDriverApi(host).handlers(),
            protocol.IPAM_DRIVER: IpamDriverApi(allocator).handlers(),
        }

    async def call(self, method: str, raw: bytes) -> tuple[int, dict[str, Any]]:
        status, answer = await self._answer(method, raw)
        if self.record is not None:
            self._write_record(method, raw, status, answer)
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

    def _write_record(self, method: str, raw: bytes, status: int, answer: dict[str, Any]) -> None:
        assert self.record is not None
        try:
            request = json.loads(raw) if raw.strip() else None
        except ValueError:
            request = raw.decode(errors="replace")
        entry = {"method": method, "request": request, "status": status, "answer": answer}
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
    open_host: Callable[[], Host],
    *,
    stop: threading.Event,
    ready: Callable[[], None] | None = None,
    record: IO[str] | None = None,
    commands: agent.Runner | None = None,
) -> None:
    """Serve the plugin at `path` until `stop` is set; the Host is opened (reconciled)
    before the socket appears, and closed after it is gone. With `commands`, also serve
    keelnet's CLI on the agent socket of the Host's state directory, as `keelnet agent`
    does (the plugin's process holds the userspace data planes)."""
    claim_socket(path)
    owner = HostThread(open_host)
    cli = None
    try:
        if commands is not None:
            runner = commands

            def respond(request: bytes) -> dict[str, object]:
                return owner.executor.submit(agent.answer, owner.host, request, runner).result()

            agent_path = owner.host.state_dir / agent.SOCKET_NAME
            cli = threading.Thread(
                target=agent.serve_socket, args=(agent_path, respond, stop), daemon=True
            )
            cli.start()
        asyncio.run(_serve(path, Dispatcher(owner, record), stop, ready))
    finally:
        stop.set()
        if cli is not None:
            cli.join(timeout=30)
        owner.close()


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


def open_host(netns: str | None, state_dir: str | None) -> Host:
    """The plugin's Host, reconciled: it serves for long (as the agent does, as dockerd
    checks its state at start), so it starts from a checked kernel."""
    host = Host(netns=netns, state_dir=state_dir)
    try:
        host.reconcile()
    except BaseException:
        host.close()
        raise
    return host


def run(
    name: str,
    *,
    netns: str | None = None,
    state_dir: str | None = None,
    path: Path | None = None,
    record: Path | None = None,
    commands: agent.Runner | None = None,
) -> int:
    """`keelnet plugin`: serve until SIGTERM or SIGINT; prints one line once serving."""
    import signal

    path = path or socket_path(name)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        with contextlib.ExitStack() as files:
            log = files.enter_context(record.open("a")) if record is not None else None
            serve(
                path,
                lambda: open_host(netns, state_dir),
                stop=stop,
                ready=lambda: print(f"keelnet plugin: serving {path}", flush=True),
                record=log,
                commands=commands,
            )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("keelnet plugin: stopped", flush=True)
    return 0
