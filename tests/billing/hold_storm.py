"""Separate processes working on one wallet at once (run by test_hold_storm.py).

    python -m tests.billing.hold_storm storm DATABASE_URL USER_ID COUNT TAG
        place and settle COUNT holds; prints {"placed", "charged_ucr"}
    python -m tests.billing.hold_storm settle DATABASE_URL USER_ID CHARGE_UCR HOLD_ID...
        settle every given hold with CHARGE_UCR (0 voids, as the sweeper does); prints
        {"settled": holds this process resolved, "already": holds it found resolved}

Both submit the ledger's work as the gateway does: operations (HoldOp, SettleOp) that the runner
group-commits, a batch at a time.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor

from switchboard.billing.ledger import HoldOp, Ledger, SettleOp
from switchboard.store.db import make_engine
from switchboard.store.runner import TransactionRunner

HOLD, CHARGE = 3_000_000, 2_000_000  # hold 3 credits, charge 2


def storm(runner: TransactionRunner, ledger: Ledger, user_id: int, count: int, tag: str) -> dict[str, int]:
    def one(i: int) -> int:
        held = runner.submit(HoldOp(ledger, user_id, f"{tag}-{i}", HOLD, "m"), order_key=user_id).result()
        if not held.ok:
            return 0
        hold_id = held.hold_id
        runner.submit(SettleOp(ledger, user_id, hold_id, CHARGE, None), order_key=user_id).result()
        return 1

    with ThreadPoolExecutor(64) as pool:
        placed = sum(pool.map(one, range(count)))
    return {"placed": placed, "charged_ucr": placed * CHARGE}


def settle(runner: TransactionRunner, ledger: Ledger, user_id: int, charge: int, hold_ids: list[int]) -> dict[str, int]:
    futures = [
        runner.submit(SettleOp(ledger, user_id, h, charge, None), order_key=user_id) for h in hold_ids
    ]
    results = [f.result() for f in futures]
    already = sum(r.already_resolved for r in results)
    return {"settled": len(results) - already, "already": already}


def main() -> None:
    command, url, user_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    engine = make_engine(url)
    ledger = Ledger({"free": 0})
    runner = TransactionRunner(engine)
    runner.start()
    if command == "storm":
        result = storm(runner, ledger, user_id, int(sys.argv[4]), sys.argv[5])
    else:
        result = settle(runner, ledger, user_id, int(sys.argv[4]), [int(h) for h in sys.argv[5:]])
    runner.stop()
    engine.dispose()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
