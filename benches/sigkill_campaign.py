"""keelnet processes SIGKILLed at random instants, a thousand times, then an audit.

Run as root:  python benches/sigkill_campaign.py [--kills 1000] [--seed N]

Each kill ends a worker process at a random instant of its random operations (create /
remove network, one with a fixed bridge name; create / remove sandbox; connect;
disconnect; publish), or of the open and reconcile it starts with; the next worker
carries on with the same store. Afterwards: what leaked, which sandboxes cannot be
connected, which addresses are doubled (see tests/netns/killlab.py; the suite runs 40
kills of the same campaign). Everything lives in throwaway namespaces `kn-k-*`, removed
at the end (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import secrets
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "netns"))

from killlab import Campaign
from netlab import create_ns, remove_prefix


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--max-delay", type=float, default=0.15, help="seconds, per worker")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    prefix = f"kn-k-{secrets.token_hex(3)}"
    with tempfile.TemporaryDirectory(prefix="kn-sigkill-") as state:
        create_ns(f"{prefix}-host")
        campaign = Campaign(f"{prefix}-host", prefix, Path(state) / "store", seed)
        try:
            result = campaign.run(args.kills, max_delay=args.max_delay, budget=3600)
        finally:
            try:
                campaign.clean_up()
            finally:
                remove_prefix(prefix)
    print(f"seed                 {result.seed}")
    print(f"operations           {result.operations}")
    print(f"kills                {result.kills}  ({result.seconds:.0f} s)")
    print(f"leaked links         {len(result.leaked_links)}")
    print(f"leaked namespaces    {len(result.leaked_namespaces)}")
    print(f"unusable sandboxes   {len(result.unusable_sandboxes)}")
    print(f"duplicate addresses  {len(result.duplicate_addresses)}")
    print(f"broken endpoints     {len(result.broken_endpoints)}")
    print(f"unexpected errors    {len(result.unexpected_errors)}")
    for line in (
        result.leaked_links
        + result.leaked_namespaces
        + result.unusable_sandboxes
        + result.duplicate_addresses
        + result.broken_endpoints
        + result.unexpected_errors
    )[:20]:
        print(f"  {line}")
    return 0 if result.clean else 1


if __name__ == "__main__":
    sys.exit(main())
