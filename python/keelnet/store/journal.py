"""The crash journal: the operations of a store that were cut short.

A Host operation writes an entry in `<state dir>/journal/` before its first kernel change
and removes it once its transaction has committed (or rolled back with every kernel step
undone). An entry still there when a Host holds the store's write lock belongs to a
process that died mid-operation: the kernel may hold half-made objects, so the Host
reconciles before going on. Opening a Host therefore costs a directory listing, not a
reconcile, unless something was cut short.

An entry also names the network namespaces its operation was about to create, which
reconcile deletes when the store never recorded them. Entries are not synced to disk: a
SIGKILL keeps what was written; a power loss takes the kernel objects with it too.

An entry is named after its process (pid and start time), so a Host can tell one of a
process still at work, which it leaves alone, from one of a process that died. An
operation that failed and could not undo all it did abandons its entry for the next
reconcile, whoever runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from keelnet.errors import StateDirError

JOURNAL_DIR = "journal"
_ABANDONED = ".abandoned"


def _start_time(pid: int) -> str | None:
    """When process `pid` started (in clock ticks since boot), None when there is none."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name may hold anything


@dataclass(frozen=True)
class Entry:
    path: Path
    sandboxes: tuple[str, ...]  # namespaces the operation was about to create

    @property
    def live(self) -> bool:
        """Whether the process that wrote the entry is still at work on it."""
        if self.path.name.endswith(_ABANDONED):
            return False
        pid, _, rest = self.path.name.partition("-")
        started = rest.partition("-")[0]
        return pid.isdigit() and _start_time(int(pid)) == started

    def close(self) -> None:
        """The operation is over (committed, or rolled back with nothing left behind)."""
        self.path.unlink(missing_ok=True)

    def abandon(self) -> None:
        """The operation failed with kernel steps it could not undo: reconcile them."""
        with contextlib.suppress(FileNotFoundError):
            self.path.rename(self.path.with_name(self.path.name + _ABANDONED))


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / JOURNAL_DIR

    def begin(self, sandboxes: tuple[str, ...] = ()) -> Entry:
        """Record that an operation starts changing the kernel."""
        pid = os.getpid()  # at each call: a forked child is another process
        path = self.dir / f"{pid}-{_start_time(pid)}-{secrets.token_hex(6)}"
        try:
            self.dir.mkdir(exist_ok=True, mode=0o700)
            path.write_text(json.dumps({"sandboxes": list(sandboxes)}))
        except OSError as exc:  # nothing changed yet: the operation stops here
            raise StateDirError(
                f"cannot write the crash journal in {self.dir} ({exc.strerror or exc}): the "
                "state directory must be writable, with room to spare"
            ) from None
        return Entry(path, sandboxes)

    def pending(self) -> bool:
        """Whether an operation was cut short (a cheap check: one directory listing)."""
        return any(not entry.live for entry in self.entries())

    def entries(self) -> list[Entry]:
        """Every entry; one cut short while being written names no namespaces (its
        operation had created nothing yet)."""
        try:
            paths = sorted(self.dir.iterdir())
        except FileNotFoundError:
            return []
        found = []
        for path in paths:
            try:
                names = json.loads(path.read_text())["sandboxes"]
                sandboxes = tuple(str(name) for name in names)
            except (OSError, ValueError, KeyError, TypeError):
                sandboxes = ()
            found.append(Entry(path, sandboxes))
        return found
