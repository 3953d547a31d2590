"""Speed of the embedded model: what the gateway adds to llama.cpp, cached follow-ups, and many
requests at once.

    .venv/bin/python -m bench.local_model_speed [--parts ttft,follow-up,concurrent,beside-long]
        [--rounds 5] [--threads N] [--before FILE]

Parts (each prints a table and all go to bench/results/local_model_speed-*.json):

* ttft: time to first token for the same short prompt, interleaved round by round: llama.cpp
  called directly (the low-level API: the conversation's tokens decoded in one batch after the
  shared prefix, one greedy sample), the provider in-process, and the gateway over HTTP
  (`switchboard serve` in its own process, a streaming request, a kept-alive connection). Every
  round uses a new account, so nothing comes from a cached conversation. "added" is the
  gateway's own part: gateway minus direct, round by round.
* follow-up: a conversation of about 3,500 tokens, then the same conversation with the reply and
  one more question, through the gateway: time to first token of each turn.
* concurrent: twelve short requests from twelve accounts at once, in-process, for several
  `parallel` settings: each request's time to first token.
* beside-long: one short request sent while a 3,500-token prompt is being read.

`--before FILE` also runs the ttft, concurrent and beside-long parts with the LocalModelProvider
defined in FILE (e.g. `git show REV:switchboard/providers/local_model.py > /tmp/before.py`),
interleaved with the current one. On a 2-core machine shared with other work the figures are
noisy: compare ranges, not single numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import LocalModelConfig
from switchboard.core.types import ChatMessage, ChatRequest, TextDelta
from switchboard.providers.local.engine import Engine, EngineSettings
from switchboard.providers.local.prompt import FORMATS
from switchboard.providers.local_model import LocalModelProvider
from switchboard.providers.model_asset import prepare_weights

ROOT = Path(__file__).resolve().parents[1]
SHORT = "What is the capital of France?"
PARAGRAPH = ("The lighthouse keeper climbed the stairs every evening, counted the ships on the horizon, "
             "wrote their names in a thick book and trimmed the lamp before the fog came in from the sea. ")


def long_conversation(turns: int = 27) -> list[dict[str, str]]:
    """About 3,500 tokens of conversation (with the default prompt format)."""
    messages: list[dict[str, str]] = []
    for k in range(turns):
        messages.append({"role": "user", "content": f"Part {k + 1} of my story: " + PARAGRAPH * 3})
        messages.append({"role": "assistant", "content": "I see. Please go on."})
    messages.append({"role": "user", "content": "Who climbed the stairs?"})
    return messages


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    ms = sorted(v * 1000 for v in values)
    return f"{statistics.median(ms):.1f} ms ({ms[0]:.1f}-{ms[-1]:.1f})"


def _request(messages: list[dict[str, str]], account: int, max_tokens: int = 1) -> ChatRequest:
    return ChatRequest("gemma-3-270m", [ChatMessage(m["role"], m["content"]) for m in messages], max_tokens=max_tokens,
                       temperature=0.0, account_id=account)


def _spec(context: int) -> ModelSpec:
    from decimal import Decimal

    return ModelSpec(name="gemma-3-270m", provider="local", upstream_name="gemma-3-270m", context_window=context,
                     input_usd_per_mtok=Decimal("0.01"), output_usd_per_mtok=Decimal("0.04"), max_output_tokens=512)


async def first_token(provider: Any, request: ChatRequest, context: int = 8192) -> float:
    started = time.perf_counter()
    async for event in provider.stream(_spec(context), request):
        if isinstance(event, TextDelta) and event.text:
            return time.perf_counter() - started
    return time.perf_counter() - started


class Direct:
    """llama.cpp through its low-level API, nothing else: the shared prefix decoded once, then per
    call the conversation's tokens in one batch and one greedy sample."""

    def __init__(self, model: Path, threads: int | None) -> None:
        import llama_cpp

        self.lib = llama_cpp
        # An Engine only to load the model, its vocabulary and a context with the prefix read,
        # exactly as the provider does; then driven by hand.
        self.engine = Engine(EngineSettings(model, 8192, 1, threads), FORMATS["qa-examples"])
        params = llama_cpp.llama_sampler_chain_default_params()
        self.sampler = llama_cpp.llama_sampler_chain_init(params)
        llama_cpp.llama_sampler_chain_add(self.sampler, llama_cpp.llama_sampler_init_greedy())

    def tokens(self, messages: list[dict[str, str]]) -> list[int]:
        chat = [ChatMessage(m["role"], m["content"]) for m in messages]
        return self.engine.vocab.tokenize(self.engine.fmt.conversation(chat))

    def first_token(self, tokens: list[int]) -> float:
        e, lib = self.engine, self.lib
        started = time.perf_counter()
        lib.llama_memory_seq_rm(e._mem, 0, -1, -1)
        lib.llama_memory_seq_cp(e._mem, e._prefix_seq, 0, -1, -1)
        p = len(e.prefix)
        for at in range(0, len(tokens), e.n_batch):
            e._clear_batch()
            chunk = tokens[at : at + e.n_batch]
            for i, token in enumerate(chunk):
                e._add(token, p + at + i, 0, at + i == len(tokens) - 1)
            assert lib.llama_decode(e._ctx, e._batch) == 0
        lib.llama_sampler_sample(self.sampler, e._ctx, e._batch.n_tokens - 1)
        return time.perf_counter() - started

    def close(self) -> None:
        self.lib.llama_sampler_free(self.sampler)
        self.engine.close()


class Gateway:
    """`switchboard serve` with the local model, in its own process, and users to call it as."""

    def __init__(self, tmp: Path, model: Path, threads: int | None, users: int) -> None:
        self.env = {**os.environ, "SWITCHBOARD_DATA_DIR": str(tmp), "SWITCHBOARD_RATE_LIMIT__REQUESTS_PER_MINUTE": "0",
                    "SWITCHBOARD_LOCAL_MODEL__MODEL_PATH": str(model), "SWITCHBOARD_LOG_LEVEL": "warning"}
        if threads:
            self.env["SWITCHBOARD_LOCAL_MODEL__THREADS"] = str(threads)
        self.sb = [sys.executable, "-m", "switchboard.cli.main"]
        self._cli("db", "upgrade")
        self.keys = []
        for k in range(users):
            email = f"speed-{k}@example.com"
            self._cli("users", "create", email, "--plan", "pro")
            self.keys.append(self._cli("keys", "create", email).splitlines()[-1].strip())
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = (tmp / "server.log").open("w+")
        self.server = subprocess.Popen(self.sb + ["serve", "--port", str(self.port)], env=self.env, cwd=ROOT,
                                       stdout=subprocess.DEVNULL, stderr=self.log)
        self.client = httpx.Client(timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                self.client.get(f"http://127.0.0.1:{self.port}/healthz")
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or self.server.poll() is not None:
                    self.log.seek(0)
                    raise RuntimeError("the gateway did not start:\n" + self.log.read()[-3000:]) from None
                time.sleep(0.2)

    def _cli(self, *args: str) -> str:
        return subprocess.run(self.sb + list(args), env=self.env, cwd=ROOT, check=True, capture_output=True,
                              text=True).stdout.strip()

    def first_token(self, messages: list[dict[str, str]], user: int, max_tokens: int = 1) -> tuple[float, str]:
        body = {"model": "gemma-3-270m", "messages": messages, "stream": True, "max_tokens": max_tokens, "temperature": 0}
        started = time.perf_counter()
        first: float | None = None
        text: list[str] = []
        with self.client.stream("POST", self.url + "/chat/completions", json=body,
                                headers={"Authorization": f"Bearer {self.keys[user]}"}) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                delta = (chunk.get("choices") or [{}])[0].get("delta", {}).get("content")
                if delta:
                    first = first if first is not None else time.perf_counter() - started
                    text.append(delta)
        assert first is not None, "no text came back"
        return first, "".join(text)

    def close(self) -> None:
        self.client.close()
        self.server.terminate()
        self.server.wait(30)
        self.log.close()


def load_before(path: Path) -> type:
    spec = importlib.util.spec_from_file_location("before_local_model", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module.LocalModelProvider  # type: ignore[no-any-return]


async def _provider(cls: type, cache: Path, threads: int | None, parallel: int | None = None, context: int = 8192) -> Any:
    fields: dict[str, Any] = {"threads": threads, "context_window": context}
    if parallel is not None:
        fields["parallel"] = parallel
    provider = cls(LocalModelConfig(**fields), cache)
    await provider.start()
    return provider


def part_ttft(args: argparse.Namespace, model: Path, before: type | None, gateway: Gateway | None) -> dict[str, Any]:
    messages = [{"role": "user", "content": SHORT}]
    direct = Direct(model, args.threads)
    tokens = direct.tokens(messages)

    async def main() -> dict[str, list[float]]:
        providers = {"provider": await _provider(LocalModelProvider, args.cache, args.threads)}
        if before is not None:
            providers["before"] = await _provider(before, args.cache, args.threads)
        times: dict[str, list[float]] = {name: [] for name in ["direct", *providers, "gateway", "added"]}
        async def settle() -> None:
            # A pause between measurements: llama.cpp's worker threads spin a while after each
            # step, and those of the previous measurement would steal the next one's cores.
            await asyncio.sleep(0.5)

        for r in range(args.rounds + 1):  # round 0 warms every path up and is not counted
            g = gateway.first_token(messages, r)[0] if gateway is not None else None
            await settle()
            d = direct.first_token(tokens)
            got = {}
            for name, p in providers.items():
                await settle()
                got[name] = await first_token(p, _request(messages, 10_000 + r))
            await settle()
            if r == 0:
                continue
            times["direct"].append(d)
            for name, t in got.items():
                times[name].append(t)
            if g is not None:
                times["gateway"].append(g)
                times["added"].append(g - d)
        for p in providers.values():
            await p.aclose()
        return times

    try:
        times = asyncio.run(main())
    finally:
        direct.close()
    print(f"\ntime to first token, {len(tokens)}-token conversation ({args.rounds} rounds, median (min-max))")
    for name, values in times.items():
        print(f"  {name:10} {spread(values)}")
    return {"prompt_tokens": len(tokens), **{k: [round(v * 1000, 2) for v in vs] for k, vs in times.items()}}


def part_follow_up(args: argparse.Namespace, gateway: Gateway) -> dict[str, Any]:
    rows = []
    for r in range(args.follow_up_rounds):
        user = args.rounds + 1 + r
        messages = long_conversation()
        first, reply = gateway.first_token(messages, user, max_tokens=16)
        follow = messages + [{"role": "assistant", "content": reply}, {"role": "user", "content": "What did he count?"}]
        second, _ = gateway.first_token(follow, user)
        rows.append((first, second))
        print(f"  round {r + 1}: first turn {first * 1000:.0f} ms, follow-up {second * 1000:.0f} ms")
    print(f"\nfollow-up to a long conversation, through the gateway: first turn {spread([a for a, _ in rows])}, "
          f"follow-up {spread([b for _, b in rows])}")
    return {"first_turn_ms": [round(a * 1000) for a, _ in rows], "follow_up_ms": [round(b * 1000, 1) for _, b in rows]}


def part_concurrent(args: argparse.Namespace, before: type | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    messages = [{"role": "user", "content": SHORT}]
    setups: list[tuple[str, type, int | None]] = [(f"parallel={n}", LocalModelProvider, n) for n in args.parallel]
    if before is not None:
        setups.insert(0, ("before", before, None))
    print(f"\n{args.concurrent} short requests at once (max_tokens {args.concurrent_max_tokens}): time to first token")
    for name, cls, parallel in setups:
        async def main() -> tuple[list[float], float]:
            provider = await _provider(cls, args.cache, args.threads, parallel)
            await first_token(provider, _request(messages, 1))  # warm-up
            started = time.perf_counter()
            ttfts = await asyncio.gather(*(
                first_token(provider, _request(messages, 20_000 + k, args.concurrent_max_tokens))
                for k in range(args.concurrent)))
            total = time.perf_counter() - started
            await provider.aclose()
            return list(ttfts), total

        ttfts, total = asyncio.run(main())
        results[name] = {"ttft_ms": sorted(round(t * 1000) for t in ttfts), "all_done_s": round(total, 2)}
        print(f"  {name:12} median {statistics.median(ttfts) * 1000:6.0f} ms, max {max(ttfts) * 1000:6.0f} ms")
    return results


def part_beside_long(args: argparse.Namespace, before: type | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    setups: list[tuple[str, type]] = [("current", LocalModelProvider)]
    if before is not None:
        setups.insert(0, ("before", before))
    print("\na short request sent while a 3,500-token prompt is read")
    for name, cls in setups:
        async def main() -> tuple[float, float]:
            provider = await _provider(cls, args.cache, args.threads)
            long = asyncio.create_task(first_token(provider, _request(long_conversation(), 30_001)))
            await asyncio.sleep(0.5)
            short = await first_token(provider, _request([{"role": "user", "content": SHORT}], 30_002))
            long_ttft = await long
            await provider.aclose()
            return short, long_ttft

        short, long_ttft = asyncio.run(main())
        results[name] = {"short_ttft_ms": round(short * 1000), "long_ttft_ms": round(long_ttft * 1000)}
        print(f"  {name:8} short: first token after {short * 1000:.0f} ms; the long one after {long_ttft * 1000:.0f} ms")
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="ttft,follow-up,concurrent,beside-long")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--follow-up-rounds", type=int, default=2)
    parser.add_argument("--concurrent", type=int, default=12)
    parser.add_argument("--concurrent-max-tokens", type=int, default=16)
    parser.add_argument("--parallel", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--cache", type=Path, default=ROOT / "data" / "models")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    model, _ = prepare_weights(args.cache)
    before = load_before(args.before) if args.before else None
    results: dict[str, Any] = {"cpus": os.cpu_count(), "threads": args.threads, "load": os.getloadavg()}
    with tempfile.TemporaryDirectory(prefix="sb-speed-") as tmp:
        gateway = None
        if parts & {"ttft", "follow-up"}:
            gateway = Gateway(Path(tmp), model, args.threads, users=args.rounds + 1 + args.follow_up_rounds)
        try:
            if "ttft" in parts:
                results["ttft"] = part_ttft(args, model, before, gateway)
            if "follow-up" in parts and gateway is not None:
                results["follow_up"] = part_follow_up(args, gateway)
        finally:
            if gateway is not None:
                gateway.close()
    if "concurrent" in parts:
        results["concurrent"] = part_concurrent(args, before)
    if "beside-long" in parts:
        results["beside_long"] = part_beside_long(args, before)
    out = ROOT / "bench" / "results" / f"local_model_speed-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
