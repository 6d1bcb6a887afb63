"""`python -m keelnet.plugin`: the same as `keelnet plugin`."""

import argparse
import sys
from pathlib import Path

from keelnet.errors import KeelnetError
from keelnet.plugin.server import run

parser = argparse.ArgumentParser(prog="keelnet plugin")
parser.add_argument("--name", default="keelnet")
parser.add_argument("--socket", type=Path)
parser.add_argument("--netns")
parser.add_argument("--state-dir")
parser.add_argument("--record", type=Path)
args = parser.parse_args()
try:
    sys.exit(
        run(
            args.name,
            netns=args.netns,
            state_dir=args.state_dir,
            path=args.socket,
            record=args.record,
        )
    )
except KeelnetError as exc:
    print(f"Error: {exc}", file=sys.stderr)
    sys.exit(1)
