"""Closed-loop HTTP load generator for OpenAI-compatible chat endpoints (aiohttp).

    python bench/loadgen.py --url http://127.0.0.1:8000/v1 --key sk-... --model m \\
        --concurrency 32 --duration 10 [--stream] [--warmup 2] [--json]

C workers each send POST {url}/chat/completions back to back (tiny prompt, max_tokens 16)
for warmup + duration seconds; only requests that complete inside the measured window
count. A streamed answer counts as OK only if it ends with `data: [DONE]`. Other scripts
import `run_load(...)`, which returns the same dict `--json` prints.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
from collections import Counter
from typing import Any

import aiohttp
import orjson


def _percentiles(values: list[float]) -> dict[str, float]:
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    s = sorted(values)

    def rank(p: float) -> float:
        return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))] * 1000

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": s[-1] * 1000, "mean": sum(s) / len(s) * 1000}


async def run_load(
    url: str,
    key: str,
    model: str,
    concurrency: int,
    duration_s: float,
    stream: bool = False,
    warmup_s: float = 0.0,
    *,
    max_tokens: int = 16,
    prompt: str = "Say hi.",
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """Drive the endpoint and return counts, throughput and latency percentiles (ms).
    `key` may list several keys, comma-separated: client i sends with key i mod their number."""
    endpoint = url.rstrip("/") + "/chat/completions"
    payload: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens}
    if stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    body = orjson.dumps(payload)
    headers_by_key = [{"Content-Type": "application/json", "Authorization": f"Bearer {k}"} for k in key.split(",")]

    latencies: list[float] = []
    first_bytes: list[float] = []
    outcomes: Counter[str] = Counter()
    # perf_counter, not loop.time(): uvloop's clock is cached with 1 ms resolution.
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s

    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=0, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker(number: int) -> None:
            headers = headers_by_key[number % len(headers_by_key)]
            now = time.perf_counter
            while True:
                t0 = now()
                if t0 >= window_end:
                    return
                first = 0.0
                try:
                    async with session.post(endpoint, data=body, headers=headers) as resp:
                        status = resp.status
                        if stream and status == 200:
                            tail = b""
                            chunk = await resp.content.readany()
                            first = now() - t0
                            while chunk:
                                tail = (tail + chunk)[-32:]  # only the end matters: did [DONE] arrive?
                                chunk = await resp.content.readany()
                            outcome = "ok" if tail.rstrip().endswith(b"data: [DONE]") else "incomplete_stream"
                        else:
                            await resp.read()
                            outcome = "ok" if status == 200 else str(status)
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                    outcome = type(exc).__name__
                t1 = now()
                if window_start <= t1 <= window_end:
                    outcomes[outcome] += 1
                    latencies.append(t1 - t0)
                    if first:
                        first_bytes.append(first)

        await asyncio.gather(*(worker(i) for i in range(concurrency)))

    total = sum(outcomes.values())
    ok = outcomes.pop("ok", 0)
    result: dict[str, Any] = {
        "url": url,
        "model": model,
        "stream": stream,
        "concurrency": concurrency,
        "duration_s": duration_s,
        "warmup_s": warmup_s,
        "requests": total,
        "ok": ok,
        "errors": dict(outcomes),
        "rps": total / duration_s if duration_s > 0 else 0.0,
        "ok_rps": ok / duration_s if duration_s > 0 else 0.0,
        "latency_ms": _percentiles(latencies),
    }
    if stream:
        result["first_byte_ms"] = _percentiles(first_bytes)
    return result


def _print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    mode = "stream" if result["stream"] else "non-stream"
    table = Table(title=f"{result['url']}  model={result['model']}  {mode}  c={result['concurrency']}  {result['duration_s']}s")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("requests", str(result["requests"]))
    table.add_row("ok", str(result["ok"]))
    errors = ", ".join(f"{k}: {v}" for k, v in sorted(result["errors"].items())) or "none"
    table.add_row("errors", errors)
    table.add_row("requests/s", f"{result['rps']:.1f}")
    table.add_row("ok requests/s", f"{result['ok_rps']:.1f}")
    for name in ("latency_ms", "first_byte_ms"):
        if name in result:
            stats = result[name]
            label = "latency" if name == "latency_ms" else "first byte"
            for p in ("p50", "p90", "p99", "max"):
                table.add_row(f"{label} {p} (ms)", f"{stats[p]:.2f}")
    Console().print(table)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Load-test an OpenAI-compatible /chat/completions endpoint.")
    parser.add_argument("--url", required=True, help="API base including /v1, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--key", default="x", help="bearer key, or several comma-separated (one per client in turn); a mock ignores it")
    parser.add_argument("--model", required=True)
    parser.add_argument("--concurrency", "-c", type=int, default=1)
    parser.add_argument("--duration", "-d", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    args = parser.parse_args(argv)

    coro = run_load(
        args.url, args.key, args.model, args.concurrency, args.duration, args.stream, args.warmup,
        max_tokens=args.max_tokens,
    )
    uvloop: Any = None
    if not args.no_uvloop:
        try:
            import uvloop  # the client side must not be the bottleneck
        except ImportError:
            uvloop = None
    result = uvloop.run(coro) if uvloop is not None else asyncio.run(coro)
    result["event_loop"] = "uvloop" if uvloop is not None else "asyncio"
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_table(result)


if __name__ == "__main__":
    main()
