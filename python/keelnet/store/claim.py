"""Which store manages a host namespace.

A store that holds networks or sandboxes claims its host namespace (the nftables table
`inet keelnet-owner`, see `keelnet.kernel.ownership`). Another store (another state
directory) refuses to work there, naming the owner, unless the owner let go: its state
directory has no database any more, holds another store now, or holds nothing. That is
checked holding the owner's write lock, so it cannot start an operation meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from keelnet.errors import NamespaceClaimed
from keelnet.kernel import ownership
from keelnet.kernel.ownership import Claim, Owner
from keelnet.store.sqlite import ForeignStore, foreign_store


class NamespaceClaim:
    """One store's claim on one host namespace (`owner` None: a store not made yet,
    for which any other store's claim is foreign)."""

    def __init__(
        self, netns: str | None, netns_path: str | None, owner: Owner | None, state_dir: Path
    ) -> None:
        self.netns = netns
        self.netns_path = netns_path
        self.owner = owner
        self.state_dir = state_dir.resolve()
        self.held: Claim | None = None

    def check(self) -> Claim | None:
        """Read the namespace's claim: remember it when it is this store's, refuse
        (NamespaceClaimed) when another store holds on to it."""
        claim = ownership.read_claim(self.netns_path)
        if claim is not None and self.owner and claim.store_id == self.owner.store_id:
            self.held = claim
        elif claim is not None:
            with self._let_go(claim):
                pass
        return self.held

    def take(self) -> None:
        """Hold the claim (inside the store's write transaction), taking it over from a
        store that let go."""
        if self.held is not None:
            return
        assert self.owner is not None, "a store claims once it exists"
        for _ in range(3):  # another store may win a race for it: look again
            current = ownership.read_claim(self.netns_path)
            if current is not None and current.store_id == self.owner.store_id:
                self.held = current
                return
            if current is None:
                taken = ownership.take_claim(self.netns_path, self.owner, str(self.state_dir))
            else:
                with self._let_go(current):
                    taken = ownership.take_claim(
                        self.netns_path, self.owner, str(self.state_dir), replacing=current
                    )
            if taken:
                self.held = ownership.read_claim(self.netns_path)
                if self.held is not None and self.held.store_id == self.owner.store_id:
                    return
                self.held = None
        current = ownership.read_claim(self.netns_path)
        raise self._refusal(current or Claim("?", "?", 0), ForeignStore("busy"))

    def forget(self) -> None:
        """Read the claim again at the next `take` (it may have been flushed away)."""
        self.held = None

    def release(self) -> None:
        """Let go of the namespace (the store holds nothing any more)."""
        claim = self.held or ownership.read_claim(self.netns_path)
        if claim is not None and self.owner and claim.store_id == self.owner.store_id:
            ownership.release_claim(self.netns_path, claim)
        self.held = None

    @contextlib.contextmanager
    def _let_go(self, claim: Claim) -> Iterator[None]:
        """Runs the block while `claim`'s store lets go of the namespace (holding its
        lock); raises NamespaceClaimed when it does not."""
        if Path(claim.state_dir) == self.state_dir:
            yield  # this state directory held another store, gone since: we replace it
            return
        with foreign_store(Path(claim.state_dir)) as seen:
            if seen.state == "missing" or (
                seen.state == "readable"
                and (seen.store_id != claim.store_id or not seen.holds_anything)
            ):
                yield
                return
        raise self._refusal(claim, seen)

    def _refusal(self, claim: Claim, seen: ForeignStore) -> NamespaceClaimed:
        where = f"network namespace {self.netns!r}" if self.netns else "this network namespace"
        message = (
            f"{where} is managed by the keelnet store in {claim.state_dir} "
            f"(store {claim.store_id}), not by the one in {self.state_dir}: "
        )
        if seen.state == "damaged":
            message += (
                f"that store cannot be read ({seen.detail}); repair or restore it, or remove "
                "that state directory to release the namespace"
            )
        elif seen.state == "busy":
            message += "that store stayed busy; try again"
        else:
            message += (
                f"use that state directory (--state-dir {claim.state_dir} or "
                "KEELNET_STATE_DIR), or remove its networks and sandboxes first"
            )
        return NamespaceClaimed(message, state_dir=claim.state_dir, store_id=claim.store_id)
