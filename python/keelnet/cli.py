"""The `keelnet` command line: Docker's verbs and flags."""

from __future__ import annotations

import argparse
import sys

import keelnet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keelnet", description=__doc__)
    parser.add_argument("--version", action="version", version=f"keelnet {keelnet.__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
