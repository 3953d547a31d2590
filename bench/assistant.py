"""Assistant benchmark: what a turn adds beyond its model call.

    .venv/bin/python -m bench.assistant [--duration 10] [--concurrency 1,8] [--history 10] [--database-url URL]
        [--kinds direct,turn,turn-json] [--no-memory] [--pause-ms 0] [--profile turns.svg]

Starts the mock upstream (bench/mock_upstream.py) and one `switchboard serve` process in front of
it, as bench/gateway.py does, then times, from this process and at each concurrency:

- direct: POST /v1/chat/completions (streamed) with the very request a turn sends upstream: the
  rendered system prompt, the conversation's history (`--history` messages), the new message,
  the built-in tools. This is the metered path alone (auth, hold, proxy, settle, usage record).
- turn: POST /v1/conversations/{id}/messages, streamed (server-sent events to turn.completed),
  and turn-json, the same without streaming: everything the assistant does around that call
  (the conversation's lease, its profile, history read and decrypted, the context fitted, the
  user's and the reply's messages encrypted and stored, the balance after).

Each client has a user and a conversation of its own (turns of one conversation run one at a
time by design), warmed up with `--history / 2` turns; the server reads `--history` messages
plus the new one (assistant.history_messages), so every measured turn sees the same history.
Long-term memory is on as by default (each message embedded and kept, memories recalled for each
turn); `--no-memory` turns it off, to see the turn without it. Clients send back to back unless
`--pause-ms` makes each wait after an answer, as a person does: then what memory keeps after a
turn (in the background) no longer competes with the next turn.
"added" is the turn's percentile less the direct one's. Results are printed and written as JSON
under bench/results/. `--profile FILE.svg` runs the server under py-spy (on the PATH) and writes
its flame graph (FILE.txt: collapsed stacks): with `--kinds turn-json`, where a turn's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from rich.console import Console
from rich.table import Table

from bench.cpu import cpu_s, with_children
from bench.databases import fresh_database
from bench.gateway import ROOT, _free_port, _wait_http, create_users, environment, write_results
from bench.loadgen import _percentiles
from bench.mock_upstream import DEFAULT_TEXT
from switchboard.assistant.assistant import default_registry
from switchboard.assistant.context import system_prompt
from switchboard.assistant.profile import Profile
from switchboard.core.config import DEFAULT_SYSTEM_PROMPT

PROMPT = "What should I cook tonight?"
PLAN = "pro"

Send = Callable[[aiohttp.ClientSession], Awaitable[bool]]


def direct_body(email: str, history: int) -> bytes:
    """The request a turn of this user's conversation sends upstream, for /v1/chat/completions."""
    profile = Profile(0, email, PLAN, None, "UTC")
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system_prompt(DEFAULT_SYSTEM_PROMPT, profile, datetime.now(timezone.utc), tools=True)}]
    for _ in range(history // 2):
        messages += [{"role": "user", "content": PROMPT}, {"role": "assistant", "content": DEFAULT_TEXT}]
    messages.append({"role": "user", "content": PROMPT})
    tools = [{"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
             for t in default_registry().for_plan(PLAN)]
    return orjson.dumps({"model": "auto", "messages": messages, "tools": tools, "stream": True,
                         "stream_options": {"include_usage": True}})


async def _streamed(response: aiohttp.ClientResponse, end: bytes) -> bool:
    """Read a stream to its end; whether it ended as a complete answer does."""
    tail = b""
    while chunk := await response.content.readany():
        tail = (tail + chunk)[-2048:]
    return response.status == 200 and end in tail


def senders(base: str, key: str, conv: str, email: str, history: int) -> dict[str, Send]:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    direct = direct_body(email, history)
    turn = orjson.dumps({"content": PROMPT, "stream": True})
    turn_json = orjson.dumps({"content": PROMPT})
    messages_url = f"{base}/conversations/{conv}/messages"

    async def send_direct(session: aiohttp.ClientSession) -> bool:
        async with session.post(f"{base}/chat/completions", data=direct, headers=headers) as r:
            return await _streamed(r, b"data: [DONE]")

    async def send_turn(session: aiohttp.ClientSession) -> bool:
        async with session.post(messages_url, data=turn, headers=headers) as r:
            return await _streamed(r, b"event: turn.completed")

    async def send_turn_json(session: aiohttp.ClientSession) -> bool:
        async with session.post(messages_url, data=turn_json, headers=headers) as r:
            body = await r.read()
            return r.status == 200 and b'"message"' in body

    return {"direct": send_direct, "turn": send_turn, "turn-json": send_turn_json}


async def load(clients: list[Send], duration_s: float, warmup_s: float, pause_s: float = 0.0) -> dict[str, Any]:
    """Closed loop: each client sends back to back (or `pause_s` after each answer, as a person
    reads and types); only answers inside the window count."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    connector = aiohttp.TCPConnector(limit=len(clients), limit_per_host=0, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client(send: Send) -> None:
            nonlocal errors
            while (t0 := time.perf_counter()) < window_end:
                try:
                    ok = await send(session)
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    ok = False
                t1 = time.perf_counter()
                if window_start <= t1 <= window_end:
                    latencies.append(t1 - t0)
                    errors += not ok
                if pause_s:
                    await asyncio.sleep(pause_s)

        await asyncio.gather(*(client(send) for send in clients))
    return {"requests": len(latencies), "errors": errors, "rps": len(latencies) / duration_s,
            "latency_ms": _percentiles(latencies)}


async def setup_clients(base: str, keys: list[tuple[str, str]], history: int) -> list[dict[str, Send]]:
    """A conversation per client, with `history` messages in it already."""
    found = []
    async with aiohttp.ClientSession() as session:
        for email, key in keys:
            headers = {"Authorization": f"Bearer {key}"}
            async with session.post(f"{base}/conversations", headers=headers) as r:
                conv = (await r.json())["id"]
            for _ in range(history // 2):
                async with session.post(f"{base}/conversations/{conv}/messages", headers=headers,
                                        json={"content": PROMPT}) as r:
                    assert r.status == 200, await r.text()
            found.append(senders(base, key, conv, email, history))
    return found


def _table(results: dict[str, Any]) -> Table:
    """The figures (ms); "added": the turn's percentile less the direct call's, when both ran."""
    table = Table(title=f"assistant turn vs its model call alone, ms ({results['history']} messages of history, "
                        f"memory {'on' if results['memory'] else 'off'}, {results['cpus']} CPUs)")
    for col in ("c", "what", "per s", "p50", "p90", "added p50", "added p90", "server CPU us", "errors"):
        table.add_column(col, justify="right")
    for run in results["runs"]:
        direct = run.get("direct", {}).get("latency_ms")
        for kind in ("direct", "turn", "turn-json"):
            if kind not in run:
                continue
            r = run[kind]
            lat = r["latency_ms"]
            added = ["", ""]
            if direct is not None and kind != "direct":
                r["added_p50_ms"] = round(lat["p50"] - direct["p50"], 3)
                r["added_p90_ms"] = round(lat["p90"] - direct["p90"], 3)
                added = [f"{r['added_p50_ms']:.2f}", f"{r['added_p90_ms']:.2f}"]
            table.add_row(str(run["concurrency"]), kind, f"{r['rps']:.0f}", f"{lat['p50']:.2f}", f"{lat['p90']:.2f}",
                          *added, str(r["server_cpu_us"]), str(r["errors"] or "-"))
    return table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark what an assistant turn adds to its model call.")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds before each run")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated client concurrencies")
    parser.add_argument("--history", type=int, default=10, help="messages of history each turn reads (even)")
    parser.add_argument("--database-url", default=None,
                        help="default: a fresh SQLite file; PostgreSQL: a fresh database beside the one named")
    parser.add_argument("--kinds", default="direct,turn,turn-json", help="what to time, comma-separated")
    parser.add_argument("--pause-ms", type=float, default=0.0,
                        help="each client's pause after an answer (a person reading and typing; 0: back to back)")
    parser.add_argument("--no-memory", action="store_true", help="long-term memory off (memory.enabled = false)")
    parser.add_argument("--profile", default=None, help="a flame graph (.svg) or collapsed stacks (.txt) of the server, by py-spy")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    kinds = args.kinds.split(",")
    levels = [int(c) for c in args.concurrency.split(",")]
    history = max(0, args.history // 2 * 2)
    console = Console()

    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp, fresh_database(args.database_url) as database_url:
        mock_port, gw_port = _free_port(), _free_port()
        env = environment(tmp, mock_port, database_url, ASSISTANT__HISTORY_MESSAGES=str(max(2, history + 1)),
                          MEMORY__ENABLED="false" if args.no_memory else "true")
        sb = [sys.executable, "-m", "switchboard.cli.main"]
        emails = [f"bench-{i}@example.com" for i in range(max(levels))]
        keys = list(zip(emails, create_users(env, emails, PLAN)))
        mock = subprocess.Popen([sys.executable, "bench/mock_upstream.py", "--port", str(mock_port)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        spy = ["py-spy", "record", "--rate", "500", "--output", str(Path(args.profile).resolve()), "--format",
               "raw" if str(args.profile).endswith(".txt") else "flamegraph", "--"] if args.profile else []
        server = subprocess.Popen(spy + sb + ["serve", "--port", str(gw_port)], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{gw_port}/v1"
        results: dict[str, Any] = {"duration_s": args.duration, "cpus": os.cpu_count(), "history": history,
                                   "memory": not args.no_memory, "pause_ms": args.pause_ms,
                                   "database": args.database_url or "sqlite (file)", "runs": []}
        pids = [server.pid]
        try:
            _wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
            _wait_http(f"http://127.0.0.1:{gw_port}/healthz")
            clients = asyncio.run(setup_clients(base, keys, history))
            pids = with_children(server.pid)  # with py-spy: py-spy, then the server
            for c in levels:
                run: dict[str, Any] = {"concurrency": c}
                for kind in kinds:
                    cpu0 = cpu_s(pids)
                    run[kind] = asyncio.run(load([s[kind] for s in clients[:c]], args.duration, args.warmup,
                                                 args.pause_ms / 1000))
                    answered = max(run[kind]["rps"] * (args.duration + args.warmup), 1.0)
                    run[kind]["server_cpu_us"] = round((cpu_s(pids) - cpu0) / answered * 1e6)
                results["runs"].append(run)
        finally:
            # py-spy writes its flame graph once the server it watches ends: stop the server itself.
            for pid in (pids[1:] if args.profile and len(pids) > 1 else [server.pid]):
                os.kill(pid, signal.SIGTERM)
            mock.terminate()
            server.wait(60)
            mock.wait(30)
    console.print(_table(results))
    console.print(f"results: {write_results(args.out, 'assistant', results)}")


if __name__ == "__main__":
    main()
