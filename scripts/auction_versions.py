"""Which models served the auctions: the ``auctions`` topic read to its end, outcomes per model pair.

    .venv/bin/python scripts/auction_versions.py            # BIDDER_KAFKA_BOOTSTRAP must be set

Prints, per ``(ctr, cvr)`` pair, how many outcomes it priced and the query times of its first and last
one: after a hot swap the old pair's last query precedes the new pair's first (give or take the queries in
flight at the swap), and no outcome names a CTR model of one release with the CVR model of another.
"""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime

from bidder.lifecycle.dataset import read_topic_snapshot
from bidder.settings import Settings


def main() -> int:
    settings = Settings()
    if not settings.kafka_bootstrap:
        print("set BIDDER_KAFKA_BOOTSTRAP", file=sys.stderr)
        return 2
    snap = read_topic_snapshot(settings.kafka_bootstrap, settings=settings, topic="auctions")
    count: Counter[tuple[str, str]] = Counter()
    first: dict[tuple[str, str], float] = {}
    last: dict[tuple[str, str], float] = {}
    for o in snap.records:
        v = o.get("model_versions") or {}
        pair = (str(v.get("ctr", "?")), str(v.get("cvr", "?")))
        ts = float(o.get("ts", 0.0))
        count[pair] += 1
        first[pair] = min(first.get(pair, ts), ts)
        last[pair] = max(last.get(pair, ts), ts)
    print(f"{len(snap.records)} outcomes below offsets {snap.end_offsets}")
    for pair, n in sorted(count.items(), key=lambda kv: first[kv[0]]):
        t0, t1 = (datetime.fromtimestamp(first[pair], UTC).strftime("%H:%M:%S"),
                  datetime.fromtimestamp(last[pair], UTC).strftime("%H:%M:%S"))
        print(f"  ctr={pair[0]:24s} cvr={pair[1]:24s} {n:7d} outcomes, queries {t0} .. {t1} UTC")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
