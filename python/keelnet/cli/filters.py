"""`--filter` for `network ls` and `network prune`, with Docker's keys and matching rules.

Values of one key are alternatives (any may match), different keys must all match.
`name` and `id` match exactly or as a regular expression found anywhere; `driver` and
`scope` match exactly; `label` is `KEY` or `KEY=VALUE`; `dangling` is true/false (a
network with no endpoints); `type` is `custom` or `builtin` (keelnet makes no built-in
networks: every network is custom); `until` is a time or a duration before now.
"""

from __future__ import annotations

import argparse
import re
import time
from collections.abc import Sequence

from keelnet.errors import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from keelnet.model import Network

LIST_KEYS = frozenset({"dangling", "driver", "id", "label", "name", "scope", "type"})
PRUNE_KEYS = frozenset({"label", "label!", "until"})
# Docker's CLI and API call the none driver "null".
_DRIVER_ALIASES = {"null": "none"}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9}
_UNIT_NS["h"] = 60 * _UNIT_NS["m"]


def filter_pair(text: str) -> tuple[str, str]:
    """argparse type of `-f/--filter`: KEY=VALUE."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError("bad format of filter (expected name=value)")
    return key.strip().lower(), value


def add_filter_flag(parser: argparse.ArgumentParser, example: str, *, short: bool = True) -> None:
    """`-f/--filter` (`--filter` alone where `-f` is --force, as in `network prune`)."""
    parser.add_argument(
        *(("-f", "--filter") if short else ("--filter",)),
        action="append",
        type=filter_pair,
        default=[],
        metavar="FILTER",
        help=f'Provide filter values (e.g. "{example}")',
    )


class NetworkFilter:
    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {}
        self.dangling: bool | None = None
        self.until_ns: int | None = None

    @classmethod
    def parse(cls, pairs: Sequence[tuple[str, str]], accepted: frozenset[str]) -> NetworkFilter:
        found = cls()
        for key, value in pairs:
            if key not in accepted:
                raise InvalidRequest(f"invalid filter '{key}': use {', '.join(sorted(accepted))}")
            found.values.setdefault(key, []).append(value)
        dangling = found.values.get("dangling", [])
        if len(dangling) > 1:
            raise InvalidRequest('got more than one value for filter key "dangling"')
        if dangling:
            if dangling[0] not in ("true", "1", "false", "0"):
                raise InvalidRequest(
                    'invalid value for filter \'dangling\', must be "true" (or "1"), '
                    'or "false" (or "0")'
                )
            found.dangling = dangling[0] in ("true", "1")
        for kind in found.values.get("type", []):
            if kind not in ("builtin", "custom"):
                raise InvalidRequest(f"invalid filter: 'type'='{kind}': use custom or builtin")
        until = found.values.get("until", [])
        if len(until) > 1:
            raise InvalidRequest("more than one until filter specified")
        if until:
            found.until_ns = parse_until(until[0])
        return found

    def matches(self, network: Network, in_use: bool) -> bool:
        values = self.values
        driver = [_DRIVER_ALIASES.get(d, d) for d in values.get("driver", [])]
        if driver and network.driver not in driver:
            return False
        if "name" in values and not _match(values["name"], network.name):
            return False
        if "id" in values and not _match(values["id"], network.id):
            return False
        if "label" in values and not _labels_match(values["label"], network.labels):
            return False
        if "label!" in values and _labels_match(values["label!"], network.labels):
            return False
        if "scope" in values and "local" not in values["scope"]:
            return False
        if self.dangling is not None and self.dangling == in_use:
            return False
        if "type" in values and "custom" not in values["type"]:
            return False
        return self.until_ns is None or network.created_ns <= self.until_ns


def _match(patterns: list[str], text: str) -> bool:
    for pattern in patterns:
        if pattern == text:
            return True
        try:
            if re.search(pattern, text):
                return True
        except re.error:
            continue
    return False


def _labels_match(wanted: list[str], labels: dict[str, str]) -> bool:
    """Every KEY or KEY=VALUE in `wanted` is among the labels (Docker's MatchKVList)."""
    if not labels:
        return False
    for item in wanted:
        key, has_value, value = item.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def parse_until(text: str, now_ns: int | None = None) -> int:
    """Docker's `until`: a Go duration before now (`10m`, `1h30m`), an RFC 3339 time or
    date, or a Unix timestamp (`1700000000[.nnn]`)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    text = text.strip()
    if text and text != "0" and _DURATION.sub("", text) == "":
        total = sum(float(n) * _UNIT_NS[unit] for n, unit in _DURATION.findall(text))
        return now_ns - int(total)
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds, _, fraction = text.partition(".")
        return int(seconds) * 10**9 + int(fraction[:9].ljust(9, "0") or 0)
    from keelnet.model import timestamp_ns

    candidate = text
    if re.fullmatch(r"\d{4}-\d\d-\d\d", text):
        candidate += "T00:00:00"
    try:
        return timestamp_ns(candidate)
    except ValueError:
        raise InvalidRequest(
            f'failed to parse value as time or duration: "{text}" '
            "(use a duration such as 24h, an RFC 3339 time or a Unix timestamp)"
        ) from None
