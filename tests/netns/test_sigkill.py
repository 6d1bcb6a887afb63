"""keelnet processes killed at random instants leave nothing behind (see killlab).

The schedule is random; its seed is printed and can be replayed with
KEELNET_SIGKILL_SEED. KEELNET_SIGKILL_KILLS sets the number of kills (default 40: about
a minute here); `benches/sigkill_campaign.py` runs a thousand.
"""

from __future__ import annotations

import os
import secrets

from killlab import Campaign
from netlab import Lab


def test_random_sigkills_leave_nothing_behind(lab: Lab) -> None:
    seed = int(os.environ.get("KEELNET_SIGKILL_SEED") or secrets.randbits(32))
    kills = int(os.environ.get("KEELNET_SIGKILL_KILLS", "40"))
    campaign = Campaign(lab.host, lab.prefix, lab.state_dir, seed)
    try:
        result = campaign.run(kills, budget=150)
        print(result.summary())
        assert result.kills >= min(kills, 10), result.summary()
        assert result.operations > result.kills, result.summary()
        assert result.clean, (
            f"{result.summary()} (replay: KEELNET_SIGKILL_SEED={seed})\n"
            f"leaked links: {result.leaked_links}\nleaked namespaces: "
            f"{result.leaked_namespaces}\nunusable: {result.unusable_sandboxes}\n"
            f"duplicates: {result.duplicate_addresses}\nbroken: {result.broken_endpoints}\n"
            f"unexpected: {result.unexpected_errors}"
        )
    finally:
        campaign.clean_up()
