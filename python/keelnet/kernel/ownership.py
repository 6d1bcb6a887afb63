"""Which keelnet store owns what in the kernel: the marks on links, the claim on a namespace.

A store (one state directory) has a random id, and every mark carries it:

- **Links.** The request that creates a link (RTM_NEWLINK) sets its device group
  (IFLA_GROUP) to `Owner.group`, taken from the store id. The kernel applies a group at
  creation, to both ends of a veth (`rtnl_create_link`), but not an alias, so from the
  instant a link exists it is recognisable as the store's. A second request adds the
  alias `keelnet:<store id>:<network id>[:<endpoint id>]`, which says what it serves. A
  link in the store's group without that alias is one a process was making when it died;
  `reconcile` removes it. Nothing of another store is ever removed.
- **The host namespace.** A store that holds networks or sandboxes claims its host
  namespace with the nftables table `inet keelnet-owner`, whose comments name the store
  and its state directory. Another store refuses to work in a claimed namespace, so the
  objects that exist once per namespace (keelnet's nftables tables, its iptables chains)
  have one owner. The claim goes with the namespace and is released when its store holds
  nothing.

Code that creates links (drivers, the overlay, the Docker plugin) passes
`Owner.link_attributes()` to pyroute2's `link("add", ...)` (or `group=Owner.group` to
`rtnl.add_veth`) and then sets `Owner.alias(...)`; nothing else is needed for crash
safety.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from keelnet.kernel import nftables

if TYPE_CHECKING:  # the store needs this module; it must not pay for pyroute2
    from pyroute2 import IPRoute

ALIAS_PREFIX = "keelnet:"
STORE_ID_LENGTH = 16  # hex digits


def new_store_id() -> str:
    """A random store id whose group is not one of the small numbers people use."""
    import secrets  # here: reading a store (every CLI command) needs no random numbers

    while True:
        store_id = secrets.token_hex(STORE_ID_LENGTH // 2)
        if int(store_id[:8], 16) > 0xFFFF:
            return store_id


class Mark(NamedTuple):
    """What a keelnet alias says: the store (None in aliases older than store ids), the
    network and, for an endpoint's link, the endpoint."""

    store_id: str | None
    network_id: str
    endpoint_id: str | None


@dataclass(frozen=True)
class Owner:
    """A store's identity, as its marks carry it."""

    store_id: str

    @property
    def group(self) -> int:
        """The device group (IFLA_GROUP) of every link the store creates."""
        return int(self.store_id[:8], 16)

    def link_attributes(self) -> dict[str, int]:
        """Attributes for pyroute2's `link("add", ...)` that mark the new link as ours."""
        return {"group": self.group}

    def alias(self, network_id: str, endpoint_id: str | None = None) -> str:
        """The ifalias saying which network (and endpoint) of this store a link serves."""
        alias = f"{ALIAS_PREFIX}{self.store_id}:{network_id}"
        return alias + (f":{endpoint_id}" if endpoint_id else "")

    def made(self, mark: Mark | None) -> bool:
        """Whether an alias's mark is this store's."""
        return mark is not None and mark.store_id == self.store_id


def parse_alias(alias: str | None) -> Mark | None:
    """The mark of a keelnet ifalias; None for anything else."""
    if not alias or not alias.startswith(ALIAS_PREFIX):
        return None
    parts = alias[len(ALIAS_PREFIX) :].split(":")
    if len(parts[0]) == STORE_ID_LENGTH and len(parts) in (2, 3):
        return Mark(parts[0], parts[1], parts[2] if len(parts) == 3 else None)
    if len(parts) in (1, 2):  # before store ids: keelnet:<network>[:<endpoint>]
        return Mark(None, parts[0], parts[1] if len(parts) == 2 else None)
    return None


class OwnedLink(NamedTuple):
    ifindex: int
    ifname: str
    mark: Mark | None  # None: half made, the alias was never set


def owned_links(ipr: IPRoute, owner: Owner) -> list[OwnedLink]:
    """The links of the namespace behind `ipr` that `owner` made or was making."""
    found = []
    for link in ipr.link("dump"):
        if link.get("group") != owner.group:
            continue
        mark = parse_alias(link.get("ifalias"))
        if mark is None or owner.made(mark):
            found.append(OwnedLink(int(link["index"]), str(link.get("ifname")), mark))
    return found


# --- the claim on a host namespace ---------------------------------------------------------

CLAIM_TABLE = ("inet", "keelnet-owner")
_COMMENT_MAX = 120  # nftables takes comments of up to 128 characters
_SAFE = "/._-~+@,=:"  # left as they are in a quoted state directory


@dataclass(frozen=True)
class Claim:
    """The store that manages a namespace: its id and state directory."""

    store_id: str
    state_dir: str
    handle: int  # the claim table's nftables handle: replacing it names the one read


def read_claim(netns_path: str | None) -> Claim | None:
    """The namespace's claim, None when it has none (or one keelnet cannot read)."""
    import urllib.parse

    family, name = CLAIM_TABLE
    listing = nftables.query(netns_path, f"list table {family} {name}")
    if listing is None:
        return None
    head = re.search(
        r"table \S+ \S+ \{ # handle (\d+)\n\s*comment \"keelnet store (\w+)\"", listing
    )
    if head is None:
        return None
    pieces = re.findall(r"chain dir(\d+) \{[^\n]*\n\s*comment \"([^\"]*)\"", listing)
    quoted = "".join(piece for _, piece in sorted(pieces, key=lambda p: int(p[0])))
    return Claim(head.group(2), urllib.parse.unquote(quoted), int(head.group(1)))


def take_claim(
    netns_path: str | None, owner: Owner, state_dir: str, replacing: Claim | None = None
) -> bool:
    """Claim the namespace for `owner`, replacing the claim `replacing` (None: when it
    has none). One nftables transaction: False when the namespace's claim is not (or no
    longer) the one expected, because another store got there first."""
    import urllib.parse

    family, name = CLAIM_TABLE
    quoted = urllib.parse.quote(state_dir, safe=_SAFE)
    pieces = [quoted[i : i + _COMMENT_MAX] for i in range(0, len(quoted), _COMMENT_MAX)]
    script = f"delete table {family} handle {replacing.handle}\n" if replacing else ""
    script += f'create table {family} {name} {{ comment "keelnet store {owner.store_id}"; }}\n'
    for number, piece in enumerate(pieces or [""]):
        script += f'add chain {family} {name} dir{number} {{ comment "{piece}"; }}\n'
    return nftables.try_apply(netns_path, script)


def release_claim(netns_path: str | None, claim: Claim) -> None:
    """Drop the claim `claim` (read before); one already gone or replaced is left alone."""
    nftables.try_apply(netns_path, f"delete table {CLAIM_TABLE[0]} handle {claim.handle}\n")
