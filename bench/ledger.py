"""Ledger benchmark: hold + settle pairs per second through the group-commit runner.

    .venv/bin/python -m bench.ledger [--database-url URL] [--pairs 3000] [--concurrency 32] [--users 1] [--writers 1] [--no-relay]

Each pair is what one API request costs the ledger: a hold (check and reserve) and a settlement
(charge, release, usage record). Default database: a fresh SQLite file; with a PostgreSQL URL,
a fresh database created beside the one named (bench/databases.py) and dropped afterwards.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.cpu import cpu_s, postgres_backends
from bench.databases import fresh_database
from switchboard.accounts.users import create_user
from switchboard.billing.ledger import HoldOp, Ledger, SettleOp
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner

USAGE = dict(api_key_id=None, endpoint="bench", model="m", provider="p", stream=False, outcome="ok", error=None,
             prompt_tokens=10, cached_prompt_tokens=0, cache_write_tokens=0, completion_tokens=5, reasoning_tokens=0,
             ttft_ms=1.0, decode_tokens_per_s=None, latency_ms=1.0, cost_usd="0.000001", route=None)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--users", type=int, default=1, help="wallets the pairs take turns over")
    parser.add_argument("--writers", type=int, default=1, help="writers (TransactionRunner writers)")
    parser.add_argument("--no-relay", action="store_true",
                        help="one thread per writer on PostgreSQL too (TransactionRunner relay=False)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.database_url) as database_url:
        url = database_url or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        engine = make_engine(url)
        upgrade(engine)
        ledger = Ledger({"bench": 10**15})
        runner = TransactionRunner(engine, writers=args.writers, relay=False if args.no_relay else None)
        runner.start()
        stamp = time.time_ns()
        user_ids = [
            runner.submit(lambda c, u=u: create_user(c, ledger, f"ledger-{stamp}-{u}@example.com", "bench")).result().id
            for u in range(args.users)
        ]

        def one(i: int) -> None:
            rid, uid = f"bench-{i}", user_ids[i % len(user_ids)]
            held = runner.submit(HoldOp(ledger, uid, rid, 5000, "m"), order_key=uid).result()
            assert held.ok and held.hold_id is not None
            hold_id = held.hold_id
            runner.submit(SettleOp(ledger, uid, hold_id, 1234, {**USAGE, "request_id": rid}), order_key=uid).result()

        for i in range(200):  # warm-up
            one(-1 - i)
        sequential_n = min(500, args.pairs)
        t0 = time.perf_counter()
        for i in range(sequential_n):
            one(10**9 + i)
        sequential_ms = (time.perf_counter() - t0) / sequential_n * 1000
        batches0, units0 = runner.batches, runner.units
        backends = postgres_backends(database_url)  # the writer's connections, open by now
        t0, cpu0, pg_cpu0 = time.perf_counter(), time.process_time(), cpu_s(backends)
        with ThreadPoolExecutor(args.concurrency) as pool:
            list(pool.map(one, range(args.pairs)))
        wall, cpu, pg_cpu = time.perf_counter() - t0, time.process_time() - cpu0, cpu_s(backends) - pg_cpu0
        with engine.connect() as conn:
            assert ledger.verify(conn) == []
        runner.stop()
        engine.dispose()
    kind = url.split(":")[0]
    postgres = f" (PostgreSQL {pg_cpu / args.pairs * 1e6:.0f} us)" if backends else ""
    print(f"{kind}: sequential {sequential_ms:.3f} ms per hold+settle; "
          f"concurrency {args.concurrency}: {args.pairs / wall:.0f} pairs/s, "
          f"{cpu / args.pairs * 1e6:.0f} us CPU per pair{postgres}, "
          f"{(runner.units - units0) / max(runner.batches - batches0, 1):.1f} units per commit "
          f"({args.users} users, {args.writers} writers{', relay' if runner.relay else ''}); ledger verified")


if __name__ == "__main__":
    main()
