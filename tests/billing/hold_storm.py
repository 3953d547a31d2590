"""A separate process placing and settling many holds on one wallet (run by test_hold_storm.py).

    python -m tests.billing.hold_storm DATABASE_URL USER_ID COUNT TAG
Prints one JSON line: how many holds were placed and how much was charged.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from switchboard.billing.ledger import Ledger
from switchboard.store.db import make_engine
from switchboard.store.runner import TransactionRunner

HOLD, CHARGE = 3_000_000, 2_000_000  # hold 3 credits, charge 2


def main() -> None:
    url, user_id, count, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    engine = make_engine(url)
    ledger = Ledger({"free": 0})
    runner = TransactionRunner(engine)
    runner.start()

    def one(i: int) -> int:
        held = runner.submit(lambda c: ledger.place_hold(c, user_id, f"{tag}-{i}", HOLD, "m"), order_key=user_id).result()
        if not held.ok:
            return 0
        hold_id = held.hold_id
        runner.submit(lambda c: ledger.settle(c, user_id, hold_id, CHARGE, None), order_key=user_id).result()
        return 1

    with ThreadPoolExecutor(64) as pool:
        placed = sum(pool.map(one, range(count)))
    runner.stop()
    engine.dispose()
    print(json.dumps({"placed": placed, "charged_ucr": placed * CHARGE}))


if __name__ == "__main__":
    main()
