"""The embedded model (Gemma 3 270M, base, by default) run in-process by llama.cpp.

This is the provider's asynchronous side: it renders and counts prompts, queues jobs and turns
what the engine thread produces into stream events. The engine (`local/engine.py`) owns the model
on one dedicated thread and decodes several requests' sequences together, reusing each account's
cached conversation; see docs/local-model.md.

Tokenization happens on the caller's thread (llama.cpp allows vocabulary lookups beside
decoding), so prompt holds are counted exactly without waiting for the engine. A prompt counted
at admission is looked up, not tokenized again, when it runs.

Streaming: the engine hands each decoded piece to the requesting event loop with
`call_soon_threadsafe`. When the consumer goes away (generator closed, task cancelled), a
threading.Event tells the engine to stop the request at its next step, or to skip it if it has
not started yet.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import random
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import LocalModelConfig
from switchboard.core.errors import ContextTooLong, UpstreamError
from switchboard.core.types import ChatMessage, ChatRequest, Finish, StreamEvent, TextDelta, Usage, UsageReport
from switchboard.providers.base import Provider
from switchboard.providers.local.engine import Engine, EngineSettings
from switchboard.providers.local.jobs import FairQueue, Job
from switchboard.providers.local.prompt import FORMATS, PromptFormat, Segment, render
from switchboard.providers.local.text import AnswerText
from switchboard.providers.local.vocab import Vocabulary
from switchboard.providers.model_asset import PACKAGED_WEIGHTS, prepare_weights

# Sampling when the request sets none: greedy, which answered the everyday-question set best
# (docs/local-model.md, "How it answers"). top_p applies once a client asks for a temperature.
DEFAULT_TEMPERATURE = 0.0
DEFAULT_TOP_P = 0.95
# Text that must never reach a reply even when the model spells it out of ordinary tokens.
MARKUP_STOPS: tuple[str, ...] = ("<start_of_", "<end_of_")
_PROMPT_MEMO_SIZE = 64  # conversations remembered between admission and running (see _tokens)

__all__ = ["AnswerText", "LocalModelProvider", "render_prompt"]


def render_prompt(messages: list[ChatMessage], fmt: PromptFormat | str = PACKAGED_WEIGHTS["gemma-3-270m"][1]) -> str:
    """The whole prompt text a format (by default the default weights') gives for these messages,
    `<bos>` aside (for docs, logs and tests)."""
    return render(FORMATS[fmt] if isinstance(fmt, str) else fmt, messages)


class LocalModelProvider(Provider):
    name = "local"
    kind = "local"

    def __init__(self, config: LocalModelConfig, cache_dir: Path, *, prompt_format: PromptFormat | None = None) -> None:
        """`prompt_format` overrides the configured one (benchmarks compare formats with it)."""
        self._config = config
        self._cache_dir = Path(cache_dir)
        self._engine: Engine | None = None  # only the worker thread runs it
        self._vocab: Vocabulary | None = None
        self._fmt_override = prompt_format
        self._fmt: PromptFormat | None = None
        # Held while tokenizing on a caller's thread and while the worker frees the model, so
        # a tokenize call can never touch a vocabulary that is being freed.
        self._free_lock = threading.Lock()
        self._prompt_memo: collections.OrderedDict[tuple[Segment, ...], list[int]] = collections.OrderedDict()
        self._window = config.context_window
        self._jobs = FairQueue()
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] | None = None
        self.model_path: Path | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Prepare and load the model on the worker thread; idempotent and safe to await twice."""
        if self._ready is None or self._ready.cancelled():
            self._ready = concurrent.futures.Future()
            self._thread = threading.Thread(target=self._worker, args=(self._ready,), name="local-model", daemon=True)
            self._thread.start()
        ready = self._ready
        try:
            await asyncio.wrap_future(ready)
        except Exception:
            if self._ready is ready:  # let a later start() try again
                self._ready = None
                self._thread = None
                self._jobs = FairQueue()
            raise

    async def aclose(self) -> None:
        """Stop the worker: waiting requests fail, running ones are cut off, weights are freed."""
        for job in self._jobs.close():
            job.cancelled.set()
            job.emit(("error", UpstreamError("the local model shut down", retryable=True)))
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._ready = None
        self._jobs = FairQueue()

    @property
    def engine(self) -> Engine | None:
        """The loaded engine (None before start). For inspection and benchmarks; never run it."""
        return self._engine

    @property
    def prompt_format(self) -> PromptFormat:
        """The format in use (known once the model is loaded: it depends on the weights)."""
        assert self._fmt is not None, "the local model is not started"
        return self._fmt

    def queue_depth(self) -> int:
        """Requests waiting for the engine (not counting the ones it is running)."""
        return len(self._jobs)

    def is_busy(self) -> bool:
        """Whether the engine is running any request right now."""
        engine = self._engine
        return engine is not None and engine.busy

    # -- counting --------------------------------------------------------------------------

    def _tokens(self, request: ChatRequest) -> list[int] | None:
        """The conversation's tokens (after the shared prefix), or None when no model is loaded."""
        with self._free_lock:
            if self._vocab is None or self._fmt is None:
                return None
            key = tuple(self._fmt.conversation(request.messages))
            tokens = self._prompt_memo.get(key)
            if tokens is not None:
                self._prompt_memo.move_to_end(key)
                return tokens
            tokens = self._vocab.tokenize(list(key))
            self._prompt_memo[key] = tokens
            if len(self._prompt_memo) > _PROMPT_MEMO_SIZE:
                self._prompt_memo.popitem(last=False)
            return tokens

    def count_prompt_tokens(self, model: ModelSpec, request: ChatRequest) -> int:
        """The conversation's tokens, exactly as they will be read. The shared prefix (`<bos>` and
        the format's fixed preamble) is read once at start-up, not per request, and not billed."""
        tokens = self._tokens(request)
        return super().count_prompt_tokens(model, request) if tokens is None else len(tokens)

    def count_text_tokens(self, model: ModelSpec, text: str) -> int:
        if not text:
            return 0
        with self._free_lock:
            if self._vocab is not None:
                return len(self._vocab.tokenize_text(text))
        return super().count_text_tokens(model, text)

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        engine = self._engine
        tokens = self._tokens(request)
        if engine is None or tokens is None:
            raise UpstreamError("the local model is not started", retryable=True)
        if len(tokens) >= self._window:
            raise ContextTooLong(
                f"This prompt is {len(tokens)} tokens; model {model.name!r} has a context window of "
                f"{self._window} tokens, including the reply.",
                param="messages",
            )
        limit = min(self._config.max_output_tokens, self._window - len(tokens))
        if model.max_output_tokens is not None:
            limit = min(limit, model.max_output_tokens)
        if request.max_tokens is not None:
            limit = min(limit, max(1, request.max_tokens))

        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()

        def emit(item: tuple[Any, ...]) -> bool:  # runs on the worker thread
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the consumer's loop is closed: nobody is listening
                return False
            return True

        fmt = self.prompt_format
        job = Job(
            account=request.account_id,
            prompt=engine.prefix + tokens,
            max_new_tokens=limit,
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else max(0.0, request.temperature),
            top_p=DEFAULT_TOP_P if request.top_p is None else min(1.0, max(0.0, request.top_p)),
            stops=fmt.stops + MARKUP_STOPS + tuple(s for s in request.stop if s),
            openers=fmt.openers,
            emit=emit,
            seed=random.getrandbits(32),
        )
        self._jobs.put(job)
        produced = False
        try:
            while True:
                item = await events.get()
                if item[0] == "text":
                    produced = True
                    yield TextDelta(item[1])
                elif item[0] == "done":
                    _, reason, generated, cached = item
                    yield Finish(reason)
                    yield UsageReport(Usage(prompt_tokens=len(tokens), completion_tokens=generated, cached_prompt_tokens=cached))
                    return
                else:
                    error = item[1]
                    if isinstance(error, UpstreamError):
                        error.retryable = error.retryable and not produced
                        raise error
                    raise UpstreamError(f"local model failed: {error}", retryable=not produced) from error
        finally:
            # Runs on completion, error, aclose() of this generator and task cancellation alike.
            job.cancelled.set()
            self._jobs.discard(job)

    # -- worker thread ---------------------------------------------------------------------

    def _worker(self, ready: concurrent.futures.Future[None]) -> None:
        if not ready.set_running_or_notify_cancel():  # start() was cancelled before we began
            return
        try:
            engine = self._load()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        jobs = self._jobs
        ready.set_result(None)
        try:
            engine.serve(jobs)
        except BaseException as exc:  # pragma: no cover - an engine bug: fail what waits, loudly
            for job in jobs.close():
                job.emit(("error", exc))
            raise
        finally:
            with self._free_lock:
                self._engine = None
                self._vocab = None
                self._prompt_memo.clear()
                engine.close()

    def _load(self) -> Engine:
        config = self._config
        self.model_path, fmt_name = prepare_weights(self._cache_dir, config.weights, config.model_path)
        fmt = self._fmt_override or FORMATS[config.prompt_format or fmt_name]
        settings = EngineSettings(
            model_path=self.model_path, context_window=config.context_window, parallel=config.parallel, threads=config.threads,
        )
        try:
            engine = Engine(settings, fmt)
        except Exception as exc:
            raise RuntimeError(f"could not load the local model from {self.model_path}: {exc}") from exc
        with self._free_lock:
            self._engine, self._vocab, self._fmt = engine, engine.vocab, fmt
        return engine
