"""What every noun's commands share: the handler type, flag parsing, output, errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

from keelnet.errors import InvalidRequest
from keelnet.host import Host

#: Runs one parsed command against a Host, returns the exit code.
Handler = Callable[[Host, argparse.Namespace], int]
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def pairs(values: Sequence[str] | None, flag: str) -> dict[str, str]:
    result = {}
    for value in values or ():
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"invalid argument {value!r} for {flag}: expected KEY=VALUE")
        result[key] = item
    return result


def labels(values: Sequence[str] | None) -> dict[str, str]:
    # Docker accepts a bare `--label key` as key="".
    return {v.partition("=")[0]: v.partition("=")[2] for v in values or ()}


def print_json(value: Any) -> None:
    print(json.dumps(value, indent=4))


def format_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--format",
        choices=("table", "json"),
        default=None,
        help="output format (json: one JSON document)",
    )


def error(exc: BaseException | str) -> None:
    print(f"Error: {exc}", file=sys.stderr)
