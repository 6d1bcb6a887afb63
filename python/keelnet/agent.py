"""`keelnet agent`: the host's daemon, as dockerd is Docker's.

A userspace data plane forwards on Rust threads owned by the process that holds the
network's :class:`~keelnet.host.Host`. A library user's program is that process; a CLI user's
`keelnet` command exits after each call, so the agent holds the Host instead and serves the
CLI over a unix socket in the host's state directory (mode 0600, root only). While an agent
runs, `keelnet` commands for the same namespace and state directory are executed by it, one
at a time, with their output and exit code sent back.

There is one agent per state directory (and so per host namespace): it holds `agent.lock`
for as long as it runs. A command that needs one (`needs_agent`) and finds none starts it,
detached, with its log in `agent.log`; `agent.start.lock` makes two commands that race to
do so start one. `agent.json` records the agent's pid and how it ended, so that `network
ls` can say why a plane is not running.

The client side of this module (forward, status, start, stop) imports nothing heavy: it
runs on every CLI command.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator

from keelnet.errors import KeelnetError
from keelnet.statedir import state_dir_path

TYPE_CHECKING = False  # not typing's: the CLI does not import typing
if TYPE_CHECKING:
    import socket
    import threading
    from pathlib import Path
    from types import FrameType
    from typing import Any

    from keelnet.host import Host
    from keelnet.model import Network

SOCKET_NAME = "agent.sock"
LOCK_NAME = "agent.lock"
START_LOCK_NAME = "agent.start.lock"
LOG_NAME = "agent.log"
STATUS_NAME = "agent.json"
MAX_REQUEST = 1 << 20
#: What the CLI and the agent say to each other; bumped when that changes, so that a CLI
#: upgraded under a running agent says to restart it instead of misunderstanding it.
PROTOCOL = 1
#: How long a command waits for an agent it started to serve (it restores every plane).
START_TIMEOUT = 60.0
#: How long a command waits for the agent's answer.
ANSWER_TIMEOUT = 300.0
_LOG_KEEP = 8 << 20

#: Runs one CLI command (its argv) against the agent's Host, returns its exit code.
Runner = Callable[["Host", list[str]], int]


class AgentError(KeelnetError):
    """The agent could not be started, reached or stopped."""


def needs_agent(network: Network) -> str | None:
    """Why `network` needs a running agent (None: it does not).

    The one place that decides it: every part of a network that lives in a process (a
    userspace data plane, the DNS server, the overlay's cluster membership) adds its
    reason here, and the CLI starts the agent for any network that has one."""
    if network.scope == "global":
        return "this host's cluster membership (lease, peer watch) runs in the keelnet agent"
    if network.dataplane == "userspace":
        return "its userspace data plane runs in the keelnet agent"
    if network.embedded_dns:
        return "its DNS server (names between sandboxes) runs in the keelnet agent"
    return None


class Paths:
    """The agent's files in one state directory (strings: no pathlib on the CLI's path)."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self.socket = os.path.join(state_dir, SOCKET_NAME)
        self.lock = os.path.join(state_dir, LOCK_NAME)
        self.start_lock = os.path.join(state_dir, START_LOCK_NAME)
        self.log = os.path.join(state_dir, LOG_NAME)
        self.status = os.path.join(state_dir, STATUS_NAME)

    @classmethod
    def of(cls, netns: str | None, state_dir: str | os.PathLike[str] | None) -> Paths:
        return cls(state_dir_path(netns, state_dir))


def socket_path(netns: str | None, state_dir: str | os.PathLike[str] | None) -> Path:
    from pathlib import Path

    return Path(Paths.of(netns, state_dir).socket)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


# --- client side ---------------------------------------------------------------------------


def _ask(paths: Paths, payload: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """Send one request to the agent; None when no agent answers on the socket."""
    if not _is_socket(paths.socket):
        return None
    import socket  # here: with no agent there is nothing to connect to

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(5.0)
        try:
            conn.connect(paths.socket)
        except (ConnectionRefusedError, FileNotFoundError):
            return None  # a socket left by an agent that died
        except TimeoutError:
            raise AgentError(
                f"the keelnet agent at {paths.socket} does not accept connections; see {paths.log}"
            ) from None
        conn.settimeout(timeout)
        try:
            conn.sendall(json.dumps(payload).encode())
            conn.shutdown(socket.SHUT_WR)
            answer = _read_all(conn)
        except TimeoutError:
            raise AgentError(
                f"the keelnet agent did not answer within {timeout:.0f} s; see {paths.log}"
            ) from None
        except (BrokenPipeError, ConnectionResetError):
            answer = b""
    if not answer:
        raise AgentError(f"the keelnet agent closed the connection; see {paths.log}")
    result: dict[str, Any] = json.loads(answer)
    return result


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
    request = {"protocol": PROTOCOL, "argv": argv, "netns": netns}
    answer = _ask(Paths.of(netns, state_dir), request, ANSWER_TIMEOUT)
    if answer is None:
        return None
    return int(answer["status"]), str(answer["stdout"]), str(answer["stderr"])


class Status:
    """What is known of the agent of one state directory: whether it runs (its pid, host
    namespace, the networks whose plane it runs) or how the last one ended."""

    def __init__(
        self,
        running: bool,
        *,
        pid: int | None = None,
        netns: str | None = None,
        version: str | None = None,
        planes: tuple[str, ...] = (),
        ended: str | None = None,
        log: str | None = None,
    ) -> None:
        self.running = running
        self.pid = pid
        self.version = version
        self.netns = netns
        self.planes = planes
        self.ended = ended
        self.log = log

    def describe(self) -> str:
        if self.running:
            planes = ", ".join(self.planes) or "none"
            return (
                f"keelnet agent {self.version} is running: pid {self.pid}, host namespace "
                f"{self.netns or '(this one)'}, userspace data planes: {planes}; log: {self.log}"
            )
        ended = f": {self.ended}" if self.ended else ""
        return f"keelnet agent is not running{ended}"


def status(netns: str | None, state_dir: str | None) -> Status:
    paths = Paths.of(netns, state_dir)
    answer = _ask(paths, {"control": "status"}, 10.0)
    if answer is not None:
        return Status(
            running=True,
            pid=int(answer["pid"]),
            netns=answer.get("netns"),
            version=answer.get("version"),
            planes=tuple(answer.get("planes", ())),
            log=paths.log,
        )
    return Status(running=False, ended=_how_it_ended(paths), log=paths.log)


def absence(netns: str | None, state_dir: str | None) -> str:
    """Why no plane runs, for `network ls`/`inspect` when no agent answers."""
    ended = _how_it_ended(Paths.of(netns, state_dir))
    start = "the next keelnet command that changes this host starts it (or `keelnet agent start`)"
    if ended is None:
        return f"no keelnet agent runs for this host; {start}"
    return f"the keelnet agent {ended}; {start}"


def _how_it_ended(paths: Paths) -> str | None:
    """The last agent's end, from agent.json (and agent.log when it could not say)."""
    try:
        with open(paths.status) as handle:
            record = json.load(handle)
    except (OSError, ValueError):
        return None
    state, pid = record.get("state"), record.get("pid")
    if state in ("starting", "running") and not _lock_held(paths):
        last = _last_log_line(paths.log)
        return f"died (pid {pid}{f': {last}' if last else ''}; log: {paths.log})"
    if state == "stopped":
        return f"was stopped ({record.get('reason', 'by request')})"
    if state == "failed":
        return f"failed: {record.get('reason', 'unknown error')} (log: {paths.log})"
    return None


def _last_log_line(log: str) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(max(0, os.stat(log).st_size - 4096))
            lines = handle.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].strip() if lines else ""


def _lock_held(paths: Paths) -> bool:
    """Whether a live agent holds this state directory's lock."""
    try:
        fd = os.open(paths.lock, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def ensure_running(
    netns: str | None, state_dir: str | None, reason: str, *, store: str | None = None
) -> bool:
    """Start the agent for this host unless one answers; True when this call started it
    (the caller then says so once). Safe when several commands race to start it."""
    paths = Paths.of(netns, state_dir)
    if _ask(paths, {"control": "status"}, 10.0) is not None:
        return False
    os.makedirs(paths.state_dir, mode=0o700, exist_ok=True)
    with _flock(paths.start_lock):
        if _ask(paths, {"control": "status"}, 10.0) is not None:
            return False  # another command started it while we waited for the lock
        _spawn(paths, netns, store)
    return True


@contextlib.contextmanager
def _flock(path: str) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _spawn(paths: Paths, netns: str | None, store: str | None) -> None:
    import subprocess

    _trim_log(paths.log)
    argv = [sys.executable, "-m", "keelnet.cli"]
    if netns:
        argv += ["--netns", netns]
    argv += ["--state-dir", paths.state_dir]
    argv += ["--store", store] if store else []  # the agent joins the cluster store
    argv += ["agent", "run"]
    with open(paths.log, "ab") as log:
        child = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd="/",
            start_new_session=True,  # outlives this command and its terminal
            close_fds=True,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if _ask(paths, {"control": "status"}, 10.0) is not None:
            return
        if child.poll() is not None and not _lock_held(paths):
            last = _last_log_line(paths.log)
            raise AgentError(
                f"the keelnet agent did not start: {last or f'exit status {child.returncode}'}"
                f" (log: {paths.log})"
            )
        time.sleep(0.02)
    raise AgentError(
        f"the keelnet agent did not serve within {START_TIMEOUT:.0f} s (log: {paths.log})"
    )


def _trim_log(log: str) -> None:
    with contextlib.suppress(OSError):
        if os.stat(log).st_size > _LOG_KEEP:
            os.replace(log, log + ".1")


def stop(netns: str | None, state_dir: str | None, timeout: float = 60.0) -> Status | None:
    """Ask the agent to stop and wait until it has; None when none was running. Returns
    its status from just before it stopped (which planes went down with it)."""
    paths = Paths.of(netns, state_dir)
    before = status(netns, state_dir)
    if not before.running:
        return None
    _ask(paths, {"control": "stop"}, 10.0)
    deadline = time.monotonic() + timeout
    while _lock_held(paths):
        if time.monotonic() > deadline:
            raise AgentError(
                f"the keelnet agent (pid {before.pid}) did not stop within {timeout:.0f} s"
            )
        time.sleep(0.02)
    return before


# --- server side ---------------------------------------------------------------------------


def _hold_lock(paths: Paths) -> None:
    """Take the state directory's agent lock for the rest of this process's life. It is
    never released by hand: the kernel drops it when the process ends (after the process's
    memory), so a free lock means the agent is gone, not going."""
    os.makedirs(paths.state_dir, mode=0o700, exist_ok=True)
    fd = os.open(paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AgentError(
            f"another keelnet agent already serves {paths.state_dir}"
            " (`keelnet agent status` says which)"
        ) from None


def _write_status(paths: Paths, **record: Any) -> None:
    temporary = paths.status + ".tmp"
    with contextlib.suppress(FileNotFoundError):  # the state directory was removed
        with open(temporary, "w") as handle:
            json.dump(record, handle)
        os.replace(temporary, paths.status)


def _answer(host: Host, request: bytes, run: Runner, netns: str | None) -> dict[str, Any]:
    import io

    out, err = io.StringIO(), io.StringIO()
    try:
        body = json.loads(request)
        argv = body["argv"]
        if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
            raise ValueError("argv must be a list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        return {"status": 2, "stdout": "", "stderr": f"Error: bad agent request: {exc}\n"}
    if body.get("protocol") != PROTOCOL:
        return {
            "status": 1,
            "stdout": "",
            "stderr": "Error: the running keelnet agent is from another keelnet version: restart "
            "it (`keelnet agent stop`; the next command starts the new one)\n",
        }
    if body.get("netns") != netns:
        return {
            "status": 1,
            "stdout": "",
            "stderr": f"Error: the keelnet agent of this state directory serves host namespace "
            f"{netns or '(its own)'}, not {body.get('netns') or '(this one)'}: give each host "
            "its own --state-dir\n",
        }
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = run(host, argv)
        except SystemExit as exc:  # argparse's usage errors
            status = exc.code if isinstance(exc.code, int) else 2
    return {"status": status, "stdout": out.getvalue(), "stderr": err.getvalue()}


class HostThread:
    """The one thread that opens, uses and closes the agent's Host (its SQLite
    connection belongs to the thread that made it): the CLI's commands and, beside them,
    the Docker plugin's requests run on it, one at a time."""

    def __init__(self, open_host: Callable[[], Host]) -> None:
        import concurrent.futures
        import threading

        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="keelnet-host")
        try:
            self.host: Host = self.executor.submit(open_host).result()
            self.thread_id: int = self.executor.submit(threading.get_ident).result()
        except BaseException:
            self.executor.shutdown()
            raise

    def call(self, work: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(work, *args).result()

    def close(self) -> None:
        try:
            self.call(self.host.close)
        finally:
            self.executor.shutdown()


#: A service started beside the agent's socket on the agent's Host (keelnet's Docker
#: plugin): given the Host's thread and the event that stops the agent, it returns once
#: it serves, with the function that waits for it to end.
Beside = Callable[[HostThread, "threading.Event"], Callable[[], None]]


def open_host(
    netns: str | None,
    state_dir: str | None,
    store: str | None = None,
    dataplane: str | None = None,
) -> Host:
    """The agent's Host, reconciled: opening a Host reconciles only when something calls
    for it; the agent, which holds it for long, starts from a checked kernel (as dockerd
    does)."""
    from keelnet.host import Host

    host = Host(netns=netns, state_dir=state_dir, store=store, dataplane=dataplane)
    try:
        done = host.reconcile()
    except BaseException:
        host.close()
        raise
    repaired = {
        key: count + host.reconciled_at_open.get(key, 0)
        for key, count in done.items()
        if count + host.reconciled_at_open.get(key, 0)
    }
    if repaired:  # what `keelnet system reconcile` would have reported (the log's reader)
        print(f"keelnet agent: reconciled at start: {repaired}", flush=True)
    return host


def serve(
    netns: str | None,
    state_dir: str | None,
    run: Runner,
    *,
    store: str | None = None,
    dataplane: str | None = None,
    beside: Beside | None = None,
) -> int:
    """Hold the Host and answer CLI commands until SIGTERM, SIGINT or `agent stop`; with
    `beside`, serve that too (`keelnet plugin`)."""
    import signal
    import socket
    import threading

    paths = Paths.of(netns, state_dir)
    _hold_lock(paths)
    stop_requested = threading.Event()
    why = "by SIGTERM"

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal why
        why = f"by {signal.Signals(signum).name}"
        stop_requested.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started_ns = time.time_ns()
    from keelnet import __version__

    record = {"pid": os.getpid(), "netns": netns, "started_ns": started_ns, "version": __version__}
    _write_status(paths, state="starting", **record)
    owner = None
    wait_beside: Callable[[], None] | None = None
    try:
        owner = HostThread(lambda: open_host(netns, state_dir, store, dataplane))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(paths.socket)
            server.bind(paths.socket)
            os.chmod(paths.socket, 0o600)
            server.listen(64)
            server.settimeout(0.2)
            if beside is not None:
                wait_beside = beside(owner, stop_requested)
            _write_status(paths, state="running", **record)
            print(f"keelnet agent: serving {paths.socket}", flush=True)
            try:
                while not stop_requested.is_set():
                    try:
                        conn, _ = server.accept()
                    except TimeoutError:
                        if not os.path.exists(paths.socket):
                            # Its state directory removed (or the socket): no command can
                            # reach it again, so nothing would ever stop it.
                            why = f"as its socket {paths.socket} was removed"
                            stop_requested.set()
                        continue
                    with conn:
                        conn.settimeout(30)
                        request = _read_all(conn)
                        control = _control(request)
                        if control == "stop":
                            why = "by `keelnet agent stop`"
                            stop_requested.set()
                            answer: dict[str, Any] = {"status": 0}
                        elif control == "status":
                            answer = {**record, "planes": owner.call(_running_planes, owner.host)}
                        else:
                            answer = owner.call(_answer, owner.host, request, run, netns)
                        with contextlib.suppress(OSError):  # the client gave up: its loss
                            conn.sendall(json.dumps(answer).encode())
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(paths.socket)
    except BaseException as exc:
        if isinstance(exc, KeelnetError | OSError):
            _write_status(paths, state="failed", reason=str(exc), **record)
        else:
            _write_status(paths, state="failed", reason=f"{type(exc).__name__}: {exc}", **record)
        raise
    else:
        _write_status(paths, state="stopped", reason=why, **record)
    finally:
        stop_requested.set()
        if wait_beside is not None:
            wait_beside()
        if owner is not None:
            owner.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(f"keelnet agent: stopped {why}", flush=True)
    return 0


def _control(request: bytes) -> str | None:
    with contextlib.suppress(ValueError, AttributeError):
        control = json.loads(request).get("control")
        return control if isinstance(control, str) else None
    return None


def _running_planes(host: Host) -> list[str]:
    return [n.name for n in host.networks() if host.data_plane_running(n)]
