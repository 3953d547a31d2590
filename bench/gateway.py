"""Gateway benchmark: the full metered path (auth, hold, proxy, settle, usage record) against
calling the same mock upstream directly.

    .venv/bin/python -m bench.gateway [--duration 10] [--concurrency 1,32] [--stream] [--database-url URL]

Starts three processes: the mock upstream (bench/mock_upstream.py), one `switchboard serve`
process in front of it, and the load generator (bench/loadgen.py), so that each measures
what it would in production: separate event loops, real sockets. On a 2-core machine they
share the cores, which the figures include. Results are printed and written as JSON under
bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from bench.cpu import cpu_s, postgres_backends, with_children
from bench.databases import fresh_database

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
[[providers]]
name = "bench"
kind = "openai-compatible"
base_url = "http://127.0.0.1:{port}/v1"

[[models]]
name = "mock-small"
provider = "bench"
upstream_name = "mock-model"
context_window = 8192
input_usd_per_mtok = 0.15
cached_input_usd_per_mtok = 0.075
output_usd_per_mtok = 0.60
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


def environment(tmp: str, mock_port: int, database_url: str | None, **settings: str) -> dict[str, str]:
    """The environment of the CLI and the server: the bench's model in front of the mock on
    `mock_port`, data in `tmp`, no rate limit, no local model; `settings` as SWITCHBOARD_NAME."""
    config = Path(tmp) / "bench.toml"
    config.write_text(CONFIG.format(port=mock_port))
    env = {**os.environ, "SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATA_DIR": tmp,
           "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false", "SWITCHBOARD_RATE_LIMIT__REQUESTS_PER_MINUTE": "0",
           **{f"SWITCHBOARD_{name}": value for name, value in settings.items()}}
    if database_url:
        env["SWITCHBOARD_DATABASE_URL"] = database_url
    return env


def create_users(env: dict[str, str], emails: list[str], plan: str = "pro") -> list[str]:
    """A fresh database with these users, each with plenty of credits: their API keys."""
    sb = [sys.executable, "-m", "switchboard.cli.main"]

    def cli(*a: str) -> str:
        done = subprocess.run(sb + list(a), env=env, cwd=ROOT, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"switchboard {' '.join(a)} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    cli("db", "upgrade")
    keys = []
    for email in emails:
        cli("users", "create", email, "--plan", plan)
        cli("credits", "grant", email, "100000000", "--reason", "benchmark")
        keys.append(cli("keys", "create", email))
    return keys


def _writer_load(server_log: str, gateway_s: float) -> dict[str, Any] | None:
    """How loaded each server process's ledger writer was, from the summary it logs when it
    stops: busy well below 100% of the time means the ledger was not what limited the rate."""
    found = re.findall(r"ledger writer: (\d+) units of work in (\d+) transactions .*busy ([\d.]+) s", server_log)
    if not found or gateway_s <= 0:
        return None
    busy = [float(b) for _, _, b in found]
    units, commits = sum(int(u) for u, _, _ in found), sum(int(c) for _, c, _ in found)
    # A unit (a hold or a settlement) from submit to answer, and the part of it spent queued:
    # against a request's latency, what the ledger adds to it (two units per request).
    timing = [(float(a), float(q)) for a, q in re.findall(r"answered in ([\d.]+) ms on average, ([\d.]+) ms of it queued",
                                                            server_log)]
    answered = max((a for a, _ in timing), default=None)
    queued = max((q for _, q in timing), default=None)
    return {"busy_s": max(busy), "gateway_s": round(gateway_s, 1), "busy_fraction": round(max(busy) / gateway_s, 3),
            "per_process_busy_s": busy, "units_per_commit": round(units / max(commits, 1), 1),
            "unit_answered_ms": answered, "unit_queued_ms": queued}


def _load(url: str, key: str, model: str, concurrency: int, duration: float, stream: bool) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "bench.loadgen", "--url", url, "--key", key, "--model", model,
           "--concurrency", str(concurrency), "--duration", str(duration), "--warmup", "2", "--json"]
    if stream:
        cmd.append("--stream")
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Benchmark the metered gateway against its upstream.")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--concurrency", default="1,32", help="comma-separated client concurrencies")
    parser.add_argument("--stream", action="store_true", help="streaming requests (default: non-streaming)")
    parser.add_argument("--database-url", default=None,
                        help="default: a fresh SQLite file; PostgreSQL: a fresh database beside the one named")
    parser.add_argument("--users", type=int, default=1, help="distinct users (wallets); clients take turns")
    parser.add_argument("--workers", type=int, default=1, help="server processes (switchboard serve --workers)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    console = Console()

    with tempfile.TemporaryDirectory(prefix="sb-bench-") as tmp, fresh_database(args.database_url) as database_url:
        mock_port, gw_port = _free_port(), _free_port()
        env = environment(tmp, mock_port, database_url, LOG_LEVEL="info")
        sb = [sys.executable, "-m", "switchboard.cli.main"]
        emails = [f"bench-{int(time.time())}-{i}@example.com" for i in range(args.users)]
        keys = create_users(env, emails)
        key = ",".join(keys)  # client i uses key i mod users
        mock = subprocess.Popen([sys.executable, "bench/mock_upstream.py", "--port", str(mock_port)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        server_log = (Path(tmp) / "server.log").open("w+")
        server = subprocess.Popen(sb + ["serve", "--port", str(gw_port), "--workers", str(args.workers)], env=env, cwd=ROOT,
                                  stdout=subprocess.DEVNULL, stderr=server_log)
        results: dict[str, Any] = {"stream": args.stream, "duration_s": args.duration, "cpus": os.cpu_count(),
                                   "users": args.users, "workers": args.workers,
                                   "database": args.database_url or "sqlite (file)", "runs": []}
        try:
            _wait_http(f"http://127.0.0.1:{mock_port}/v1/models")
            _wait_http(f"http://127.0.0.1:{gw_port}/healthz")
            gateway_s = 0.0
            for c in levels:
                direct = _load(f"http://127.0.0.1:{mock_port}/v1", "x", "mock-model", c, args.duration, args.stream)
                pids, pg_pids = with_children(server.pid), postgres_backends(database_url)
                cpu0, pg_cpu0 = cpu_s(pids), cpu_s(pg_pids)
                started = time.perf_counter()
                metered = _load(f"http://127.0.0.1:{gw_port}/v1", key, "mock-small", c, args.duration, args.stream)
                elapsed = time.perf_counter() - started
                gateway_s += elapsed
                # CPU per request, less sensitive to a noisy machine than the rate: what the
                # server's processes and its PostgreSQL backends used over the run (warm-up
                # included), over the requests answered in that time at the measured rate.
                # Backends that connected during the run count from their start.
                pg_pids = sorted(set(pg_pids) | set(postgres_backends(database_url)))
                requests = max(metered["ok_rps"] * elapsed, 1.0)
                metered["server_cpu_us_per_request"] = round((cpu_s(pids) - cpu0) / requests * 1e6)
                if pg_pids:
                    metered["postgres_cpu_us_per_request"] = round((cpu_s(pg_pids) - pg_cpu0) / requests * 1e6)
                results["runs"].append({"concurrency": c, "direct": direct, "gateway": metered})
            usage = subprocess.run(sb + ["usage", emails[0], "--json", "--limit", "1"], env=env, cwd=ROOT,
                                   capture_output=True, text=True).stdout
            results["last_usage_record"] = json.loads(usage)[0] if usage.strip() else None
        finally:
            server.terminate()
            mock.terminate()
            server.wait(30)
            mock.wait(30)
            server_log.seek(0)
            results["ledger_writer"] = _writer_load(server_log.read(), gateway_s)
            server_log.close()

    table = Table(title=f"metered gateway vs direct ({'stream' if args.stream else 'non-stream'}, {os.cpu_count()} CPUs)")
    for col in ("concurrency", "direct rps", "gateway rps", "direct p50", "gateway p50", "added p50",
                "direct p99", "gateway p99", "added p99", "errors"):
        table.add_column(col, justify="right")
    for run in results["runs"]:
        d, g = run["direct"], run["gateway"]
        dl, gl = d["latency_ms"], g["latency_ms"]
        run["added_p50_ms"] = round(gl["p50"] - dl["p50"], 3)
        run["added_p99_ms"] = round(gl["p99"] - dl["p99"], 3)
        table.add_row(str(run["concurrency"]), f"{d['ok_rps']:.0f}", f"{g['ok_rps']:.0f}", f"{dl['p50']:.2f} ms",
                      f"{gl['p50']:.2f} ms", f"{run['added_p50_ms']:.2f} ms", f"{dl['p99']:.2f} ms",
                      f"{gl['p99']:.2f} ms", f"{run['added_p99_ms']:.2f} ms", str(g["errors"] or "-"))
    console.print(table)
    for run in results["runs"]:
        g = run["gateway"]
        pg = f", PostgreSQL {g['postgres_cpu_us_per_request']} us" if "postgres_cpu_us_per_request" in g else ""
        console.print(f"concurrency {run['concurrency']}: CPU per request: server {g['server_cpu_us_per_request']} us{pg}")
    if results.get("ledger_writer"):
        w = results["ledger_writer"]
        console.print(f"ledger writer thread (busiest process): busy {w['busy_fraction']:.0%} of the gateway runs' time "
                      f"({w['busy_s']:.1f} s of {w['gateway_s']:.1f} s), {w['units_per_commit']:.1f} units per commit")
        if w.get("unit_answered_ms") is not None:
            console.print(f"a hold or settlement took {w['unit_answered_ms']:.2f} ms from submit to answer on average "
                          f"({w['unit_queued_ms']:.2f} ms of it queued); a request has one of each")
    console.print(f"results: {write_results(args.out, 'gateway-stream' if args.stream else 'gateway-json', results)}")


def write_results(folder: str, name: str, results: dict[str, Any]) -> Path:
    """Keep a run's results as JSON in `folder` (NAME-TIME.json)."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{int(time.time())}.json"
    path.write_text(json.dumps(results, indent=2))
    return path


if __name__ == "__main__":
    main()
