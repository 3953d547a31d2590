"""Router benchmark: how long one `auto` decision takes, calling no model.

    .venv/bin/python -m bench.router [--n 20000] [--data DIR]

Decides for a mix of prompts (MMLU questions from the routing data set when it is readable,
plus chat, coding, writing and long-document prompts) over the full shipped catalog, on one
core (the process is pinned to CPU 0 where the OS allows), and prints p50/p90/p99/max.
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import time
from pathlib import Path

from switchboard.core.config import Settings
from switchboard.core.types import ChatMessage, ChatRequest
from switchboard.cli.routing import make_router

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "routellm-mmlu"
EXTRA = [
    "hi", "Remind me to call the dentist tomorrow at 9", "What is the capital of Australia?",
    "Write a warm thank-you email to my team for shipping the release",
    "Why does this code throw?\n```python\ndef f(xs):\n    return xs[len(xs)]\n```",
    "Solve for x: 2x^2 - 8x + 6 = 0 and explain each step.",
    "Summarise the following report:\n" + "The committee met to discuss the budget. " * 600,
]


def prompts(data: Path, limit: int = 2000) -> list[str]:
    found: list[str] = []
    if data.is_dir():
        for path in sorted(data.glob("mmlu_*.csv")):
            with path.open(encoding="utf-8") as f:
                rows = list(csv.reader(f))[1:]
            found.extend(row[0] for row in rows[:40])
    random.Random(7).shuffle(found)
    return found[:limit] + EXTRA * 20


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {0})
    router = make_router(Settings(local_model={"enabled": False}), whole_catalog=True)  # the shipped models, keys or not
    texts = prompts(args.data)
    requests = [ChatRequest(model="auto", messages=[ChatMessage("user", t)]) for t in texts]
    for r in requests[:500]:  # warm-up
        router.decide(r, plan="pro")
    times = []
    clock = time.perf_counter_ns
    for i in range(args.n):
        r = requests[i % len(requests)]
        t0 = clock()
        router.decide(r, plan="pro")
        times.append(clock() - t0)
    times.sort()

    def pct(p: float) -> float:
        return times[min(len(times) - 1, int(p * len(times)))] / 1000

    print(f"{args.n} decisions over {len(router.catalog)} models, {len(texts)} distinct prompts, one core: "
          f"p50 {pct(0.5):.0f} us, p90 {pct(0.9):.0f} us, p99 {pct(0.99):.0f} us, max {times[-1] / 1000:.0f} us")


if __name__ == "__main__":
    main()
