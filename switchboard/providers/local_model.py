"""The embedded model: Gemma 3 270M (base) run in-process by llama.cpp.

Threading: one dedicated worker thread owns the `llama_cpp.Llama` object. It loads the
weights and runs every prefill and decode step, because a llama.cpp context must not be
used from two threads at once. Only tokenization (vocabulary lookups; llama.cpp's own server
tokenizes on its HTTP threads while its main loop decodes) happens on the caller's thread,
so that prompt holds can be counted exactly without waiting for the engine.

Scheduling: one generation at a time. Waiting requests sit in one FIFO per account and the
worker serves accounts round-robin, so a user who queues many requests delays only their own,
never everyone's. A generation runs to its end (or its cancellation) once started.

Streaming: the worker hands each decoded piece to the requesting event loop with
`call_soon_threadsafe`, so clients see tokens as they are produced. When the consumer goes
away (generator closed, task cancelled), a threading.Event tells the worker to stop at the
next token, or to skip the request if it has not started yet.
"""

from __future__ import annotations

import asyncio
import codecs
import collections
import concurrent.futures
import ctypes
import threading
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import LocalModelConfig
from switchboard.core.errors import ContextTooLong, UpstreamError
from switchboard.core.types import ChatMessage, ChatRequest, Finish, StreamEvent, TextDelta, Usage, UsageReport
from switchboard.providers.base import Provider
from switchboard.providers.model_asset import prepare_model

# Sampling defaults for a small base model: moderate temperature and a min-p/top-k cut keep it
# from wandering into junk; a mild repeat penalty stops the loops small models fall into.
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.95
TOP_K = 40
MIN_P = 0.05
REPEAT_PENALTY = 1.1
_PROMPT_MEMO_SIZE = 64  # prompts remembered between admission and running (see _tokenize)

# Gemma 3 270M here is the *base* model: it continues text rather than following chat turns,
# and it ignores Gemma's <start_of_turn> chat template (it loops on it). A plain
# "Question: ... / Answer:" transcript gave the shortest, most often correct answers in our
# trials, beating "User:/Assistant:" transcripts with or without a preamble. The model marks
# the end of an answer by starting a new turn or leaving a blank line, so those end it.
TRANSCRIPT_STOPS: tuple[str, ...] = ("\nQuestion:", "\nAnswer:", "\nTool result:", "\n\n")

_ROLE_LABELS = {"user": "Question", "assistant": "Answer", "tool": "Tool result"}
# The same turn markers at the very start of a reply, where no newline precedes them.
_TURN_OPENERS: tuple[str, ...] = tuple(f"{label}:" for label in _ROLE_LABELS.values())


def render_prompt(messages: list[ChatMessage]) -> str:
    """The transcript the base model continues.

    System messages become a preamble paragraph; the other messages become "Question:",
    "Answer:" and "Tool result:" lines; the prompt ends with "Answer:" so that the model's
    continuation is the reply.
    """
    system = [m.text().strip() for m in messages if m.role == "system" and m.text().strip()]
    parts: list[str] = []
    if system:
        parts.append("\n".join(system) + "\n\n")
    for message in messages:
        if message.role == "system":
            continue
        text = message.text().strip()
        if message.role == "assistant" and message.tool_calls:
            calls = "; ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
            text = f"{text} [called {calls}]".strip()
        parts.append(f"{_ROLE_LABELS.get(message.role, 'Question')}: {text}\n")
    parts.append("Answer:")
    return "".join(parts)


# ---------------------------------------------------------------------------------------------
# Fair queue


@dataclass(eq=False)
class _Job:
    """One request on its way through the worker. Compared by identity."""

    account: int | None
    prompt_tokens: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    emit: Callable[[tuple[Any, ...]], bool]  # returns False once the consumer's loop is gone
    cancelled: threading.Event = field(default_factory=threading.Event)


class _FairQueue:
    """Waiting jobs, one FIFO per account, served round-robin across accounts."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._by_account: OrderedDict[int | None, deque[_Job]] = OrderedDict()
        self._closed = False
        self.running: _Job | None = None  # the job the worker is on, so close() can cut it off

    def put(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                raise UpstreamError("the local model is shutting down", retryable=True)
            self._by_account.setdefault(job.account, deque()).append(job)
            self._cond.notify()

    def discard(self, job: _Job) -> None:
        """Drop a job that has not started (its consumer went away)."""
        with self._cond:
            waiting = self._by_account.get(job.account)
            if waiting is not None and job in waiting:
                waiting.remove(job)
                if not waiting:
                    del self._by_account[job.account]

    def take(self) -> _Job | None:
        """The next job in turn, blocking until there is one; None once closed."""
        with self._cond:
            self.running = None
            while True:
                if self._closed:
                    return None
                if self._by_account:
                    account, waiting = next(iter(self._by_account.items()))
                    job = waiting.popleft()
                    if waiting:
                        self._by_account.move_to_end(account)  # its next job waits for the others
                    else:
                        del self._by_account[account]
                    if not job.cancelled.is_set():
                        self.running = job
                        return job
                    continue
                self._cond.wait()

    def __len__(self) -> int:
        with self._cond:
            return sum(len(waiting) for waiting in self._by_account.values())

    def close(self) -> list[_Job]:
        """Stop handing out jobs; return the ones still waiting and the one running."""
        with self._cond:
            self._closed = True
            left = [job for waiting in self._by_account.values() for job in waiting]
            if self.running is not None:
                left.append(self.running)
            self._by_account.clear()
            self._cond.notify_all()
            return left


# ---------------------------------------------------------------------------------------------
# Answer text


def _split_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split text into (safe to emit, held back, stopped).

    Text up to the first complete stop string is emitted and the rest dropped. Otherwise the
    longest tail that could still grow into a stop string is held back, so that no part of a
    stop string ever reaches the client.
    """
    first = -1
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (first < 0 or at < first):
            first = at
    if first >= 0:
        return text[:first], "", True
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    cut = len(text) - hold
    return text[:cut], text[cut:], False


class _AnswerText:
    """Turns decoded pieces into the text the client sees.

    Leading whitespace is dropped (the model answers " Paris" after "Answer:"), trailing
    whitespace is held until more text follows (and dropped at the end), and the answer ends at
    the first stop string, none of which leaks out, not even in part.
    """

    def __init__(self, stops: tuple[str, ...], openers: tuple[str, ...] = ()) -> None:
        self.stops = stops
        self.openers = openers  # markers that end the reply if it opens with them
        self.pending = ""
        self.started = False
        self.stopped = False

    def feed(self, piece: str) -> str:
        text = self.pending + piece
        if not self.started:
            text = text.lstrip()
            self.pending = text
            if not text:
                return ""
            # With the leading whitespace gone, a reply that opens with a new turn
            # ("\n\nQuestion: ...") no longer shows the newline the stop strings look for.
            if text.startswith(self.openers):
                self.stopped = True
                self.pending = ""
                return ""
            if any(opener.startswith(text) for opener in self.openers):
                return ""  # could still become one: hold it
        emit, held, self.stopped = _split_stop(text, self.stops)
        body = emit.rstrip()
        self.pending = "" if self.stopped else emit[len(body) :] + held
        if body:
            self.started = True
        return body

    def finish(self) -> str:
        """What is left once generation ended without a stop string."""
        rest = "" if self.stopped else self.pending.rstrip()
        self.pending = ""
        return rest if self.started else rest.lstrip()


# ---------------------------------------------------------------------------------------------
# Provider


class LocalModelProvider(Provider):
    name = "local"
    kind = "local"

    def __init__(self, config: LocalModelConfig, cache_dir: Path) -> None:
        self._config = config
        self._cache_dir = Path(cache_dir)
        self._llama: Any = None  # llama_cpp.Llama once loaded; only the worker runs it
        self._vocab: Any = None
        # Held while tokenizing on a caller's thread and while the worker frees the model, so
        # a tokenize call can never touch a vocabulary that is being freed.
        self._free_lock = threading.Lock()
        # The last prompts tokenized (rendered text -> tokens): a request's prompt is counted
        # when it is admitted and tokenized again when it runs; the second time is a lookup.
        self._prompt_memo: collections.OrderedDict[str, list[int]] = collections.OrderedDict()
        self._n_ctx = config.context_window
        self._jobs = _FairQueue()
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
                self._jobs = _FairQueue()
            raise

    async def aclose(self) -> None:
        """Stop the worker: waiting requests fail, a running one is cut off, weights are freed."""
        for job in self._jobs.close():
            job.cancelled.set()  # the worker drops it at the next token
            job.emit(("error", UpstreamError("the local model shut down", retryable=True)))
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._ready = None
        self._jobs = _FairQueue()

    @property
    def llama(self) -> Any:
        """The loaded `llama_cpp.Llama` (None before start). Tokenize with it; never eval."""
        return self._llama

    def queue_depth(self) -> int:
        """Requests waiting for the engine (not counting the one it is running)."""
        return len(self._jobs)

    def is_busy(self) -> bool:
        """Whether the engine is running a request right now."""
        return self._jobs.running is not None

    # -- counting --------------------------------------------------------------------------

    def _tokenize(self, text: str, *, add_bos: bool) -> list[int] | None:
        """Tokens of `text`, or None when no model is loaded."""
        with self._free_lock:
            if self._llama is None:
                return None
            if add_bos and (tokens := self._prompt_memo.get(text)) is not None:
                self._prompt_memo.move_to_end(text)
                return tokens
            # special=False: text that looks like a control token stays text.
            tokens = self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)
            if add_bos:
                self._prompt_memo[text] = tokens
                if len(self._prompt_memo) > _PROMPT_MEMO_SIZE:
                    self._prompt_memo.popitem(last=False)
            return tokens

    def prompt_tokens(self, request: ChatRequest) -> list[int]:
        """The exact tokens the model will be fed for this request."""
        tokens = self._tokenize(render_prompt(request.messages), add_bos=True)
        if tokens is None:
            raise UpstreamError("the local model is not started", retryable=True)
        return list(tokens)  # the memo's list stays untouched by whoever evaluates this one

    def count_prompt_tokens(self, model: ModelSpec, request: ChatRequest) -> int:
        tokens = self._tokenize(render_prompt(request.messages), add_bos=True)
        return super().count_prompt_tokens(model, request) if tokens is None else len(tokens)

    def count_text_tokens(self, model: ModelSpec, text: str) -> int:
        if not text:
            return 0
        tokens = self._tokenize(text, add_bos=False)
        return super().count_text_tokens(model, text) if tokens is None else len(tokens)

    # -- streaming -------------------------------------------------------------------------

    async def stream(self, model: ModelSpec, request: ChatRequest) -> AsyncIterator[StreamEvent]:
        tokens = self.prompt_tokens(request)
        if len(tokens) >= self._n_ctx:
            raise ContextTooLong(
                f"This prompt is {len(tokens)} tokens; model {model.name!r} has a context window of "
                f"{self._n_ctx} tokens, including the reply.",
                param="messages",
            )
        limit = min(self._config.max_output_tokens, self._n_ctx - len(tokens))
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

        job = _Job(
            account=request.account_id,
            prompt_tokens=tokens,
            max_new_tokens=limit,
            temperature=DEFAULT_TEMPERATURE if request.temperature is None else max(0.0, request.temperature),
            top_p=DEFAULT_TOP_P if request.top_p is None else min(1.0, max(0.0, request.top_p)),
            stops=TRANSCRIPT_STOPS + tuple(s for s in request.stop if s),
            emit=emit,
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
                    yield Finish(item[1])
                    yield UsageReport(Usage(prompt_tokens=len(tokens), completion_tokens=item[2]))
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
            llama = self._load()
        except BaseException as exc:
            ready.set_exception(exc)
            return
        jobs = self._jobs
        ready.set_result(None)
        try:
            while (job := jobs.take()) is not None:
                try:
                    self._run(llama, job)
                except Exception as exc:  # one request's failure must not kill the worker
                    job.emit(("error", exc))
        finally:
            with self._free_lock:
                self._llama = None
                self._vocab = None
                self._prompt_memo.clear()
                llama.close()

    def _load(self) -> Any:
        import llama_cpp

        self.model_path = prepare_model(self._cache_dir, self._config.model_path)
        try:
            llama = llama_cpp.Llama(
                model_path=str(self.model_path),
                n_ctx=self._config.context_window,
                n_threads=self._config.threads,
                n_threads_batch=self._config.threads,
                verbose=False,
            )
        except Exception as exc:
            raise RuntimeError(f"could not load the local model from {self.model_path}: {exc}") from exc
        self._vocab = llama_cpp.llama_model_get_vocab(llama.model)
        self._n_ctx = llama.n_ctx()
        self._llama = llama
        return llama

    def _piece(self, token: int) -> bytes:
        """The bytes of one token (special tokens render as nothing).

        Done here rather than with Llama.detokenize, whose fixed 32-byte buffer truncates
        Gemma's longer pieces (runs of spaces, HTML fragments)."""
        import llama_cpp

        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n

    def _run(self, llama: Any, job: _Job) -> None:
        import llama_cpp

        # A fresh evaluation for every request: no KV state carries over from another user's
        # prompt, and the same request gives the same greedy output whatever ran before it.
        llama.reset()
        prompt = job.prompt_tokens
        step = max(1, int(llama.n_batch))
        for at in range(0, len(prompt), step):  # prefill in batches, checking for cancellation
            if job.cancelled.is_set():
                return
            llama.eval(prompt[at : at + step])

        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        answer = _AnswerText(job.stops, _TURN_OPENERS)
        generated = 0
        reason = "length"
        # The whole prompt is in the KV cache now, so generate() samples straight away.
        tokens = llama.generate(
            prompt,
            top_k=TOP_K,
            top_p=job.top_p,
            min_p=MIN_P,
            temp=job.temperature,
            repeat_penalty=REPEAT_PENALTY,
            reset=True,
        )
        try:
            for token in tokens:
                if job.cancelled.is_set():
                    return
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    reason = "stop"
                    break
                generated += 1
                text = answer.feed(decoder.decode(self._piece(token)))
                if text and not job.emit(("text", text)):
                    return
                if answer.stopped:
                    reason = "stop"
                    break
                if generated >= job.max_new_tokens:
                    break
        finally:
            tokens.close()
        if not answer.stopped:
            rest = answer.feed(decoder.decode(b"", final=True)) + answer.finish()
            if rest:
                job.emit(("text", rest))
        job.emit(("done", reason, generated))
