"""The llama.cpp engine: several sequences decoded together, each account's conversation cached.

One dedicated thread owns the model and its context and runs every step (a llama.cpp context
must never be used from two threads). The context holds `parallel` sequences in one unified KV
cache, plus one more that holds the shared prefix (`<bos>` and the prompt format's preamble),
computed once at start-up and copied into each sequence by reference.

Each step builds one batch: the last sampled token of every sequence that is generating, then
prompt tokens of sequences still reading their prompt, shortest remainder first, so a short
request's first token does not wait for a long prompt to be read. One `llama_decode` runs them
all; then each generating sequence samples its next token from its own row of logits.

Conversations are cached per account: when a sequence finishes, its tokens stay in the cache,
marked with the account that wrote them. The same account's next request (the same conversation
plus a reply and a new message) reuses the longest common prefix and reads only what is new.
A sequence is only ever reused by the account that wrote it; another account's request first
removes everything but the shared prefix, so nothing of one user's prompt reaches another's.

Replies are never empty and never contain control tokens: control, unused and multimodal
tokens are never sampled; before a reply has visible text, end-of-generation and whitespace
tokens are not sampled either; a reply that still comes out empty (it opened with a new turn,
or a client's stop string matched at once) is drawn again from the end of the prompt, with its
first token banned, at no charge; a reply that starts repeating itself token for token is ended.
"""

from __future__ import annotations

import codecs
import ctypes
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from switchboard.core.errors import UpstreamError
from switchboard.providers.local.jobs import FairQueue, Job
from switchboard.providers.local.prompt import PromptFormat
from switchboard.providers.local.text import AnswerText, LoopGuard
from switchboard.providers.local.vocab import Vocabulary

log = logging.getLogger(__name__)

# Sampling: a top-k cut first (so that the repeat penalty scans 40 candidates, not the 262k
# vocabulary), then the penalty over the reply's last tokens, then top-p / min-p / temperature.
TOP_K = 40
MIN_P = 0.05
REPEAT_PENALTY = 1.1
PENALTY_LAST_N = 64
# An empty reply is drawn again this many times in all before the request fails (uncharged).
MAX_ATTEMPTS = 4
# While other sequences are generating, a step reads at most this many prompt tokens, so that
# their next token is never more than a short prefill away.
PREFILL_SLICE = 128

_NOBODY = object()  # the owner of a sequence nobody may reuse
# A cached conversation is continued when it shares this many tokens with the new prompt;
# below that (two conversations that only share "Question:") an empty sequence is taken, so
# that the cached one stays for when its conversation goes on.
_WORTH_REUSING = 16


@dataclass(frozen=True)
class EngineSettings:
    model_path: Path
    context_window: int  # the longest prompt + reply one request may use (the shared prefix aside)
    parallel: int  # sequences decoded together
    threads: int | None  # llama.cpp threads; None: its defaults
    # Tokens per llama_decode: a step reads at most this much of a prompt, so a short request
    # arriving while a long prompt is read waits at most one such step (about a second here).
    batch: int = 256


@dataclass(eq=False)
class _Run:
    """One job on a sequence: where its prompt reading stands and the reply so far."""

    job: Job
    sampler: Any
    fed: int  # prompt tokens in the sequence's cache
    cached_tokens: int  # prompt tokens found in the account's cache (beyond the shared prefix)
    answer: AnswerText
    attempt: int = 0
    first_bans: list[int] = field(default_factory=list)
    first: int | None = None  # the first token of this attempt
    next_token: int | None = None  # sampled, not yet fed
    generated: int = 0
    loop: LoopGuard = field(default_factory=LoopGuard)
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"))


@dataclass(eq=False)
class _Slot:
    seq: int
    owner: object = _NOBODY
    cached: list[int] = field(default_factory=list)  # the tokens in this sequence's cache, by position
    used_at: float = 0.0
    run: _Run | None = None


_log_callback: Any = None  # kept referenced: llama.cpp calls it for as long as the process lives


def _route_llama_logs(lib: Any) -> None:
    """llama.cpp's own log lines go to Python logging (debug level) instead of stderr."""
    global _log_callback
    if _log_callback is None:
        @lib.llama_log_callback
        def forward(level: int, text: bytes, _user: Any) -> None:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("llama.cpp: %s", text.decode("utf-8", "replace").rstrip())

        _log_callback = forward
        lib.llama_log_set(_log_callback, ctypes.c_void_p(0))


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    x = np.asarray(a[:n], dtype=np.int32)
    y = np.asarray(b[:n], dtype=np.int32)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if differ.size else n


class Engine:
    """A loaded model with its context, serving jobs from a FairQueue until it closes."""

    def __init__(self, settings: EngineSettings, fmt: PromptFormat) -> None:
        import llama_cpp

        _route_llama_logs(llama_cpp)
        self._lib = lib = llama_cpp
        self.fmt = fmt
        lib.llama_backend_init()
        params = lib.llama_model_default_params()
        self._model = lib.llama_model_load_from_file(str(settings.model_path).encode(), params)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {settings.model_path}")
        try:
            self.vocab = Vocabulary(lib, lib.llama_model_get_vocab(self._model))
            self.prefix = self.vocab.tokenize(fmt.prefix(), add_bos=True)
            self.parallel = max(1, settings.parallel)
            self.n_batch = settings.batch
            self._prefix_seq = self.parallel
            self._ctx = self._new_context(settings)
        except BaseException:
            lib.llama_model_free(self._model)
            raise
        self.n_ctx = int(lib.llama_n_ctx(self._ctx))
        self._mem = lib.llama_get_memory(self._ctx)
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._slots = [_Slot(seq) for seq in range(self.parallel)]
        self._read_prefix()

    def _new_context(self, settings: EngineSettings) -> Any:
        lib = self._lib
        params = lib.llama_context_default_params()
        params.n_ctx = settings.context_window + len(self.prefix)
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_seq_max = self.parallel + 1
        # One cache for all sequences, so the shared prefix is stored once; full-size sliding-
        # window layers, so a cached conversation can be cut back to any point and continued.
        params.kv_unified = True
        params.swa_full = True
        params.no_perf = True
        # One token at a time is memory-bound: half the cores (llama-cpp-python's default). A
        # batch is compute-bound: all the cores, but not on a machine of two or fewer, where two
        # threads stall each other whenever anything else runs (a first token measured at 0.5 to
        # 4.7 s through the gateway with two, 0.2 to 0.3 s with one; docs/local-model.md).
        cores = os.cpu_count() or 1
        params.n_threads = settings.threads or max(1, cores // 2)
        params.n_threads_batch = settings.threads or (cores if cores > 2 else params.n_threads)
        ctx = lib.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError("llama.cpp could not create a context for the local model")
        return ctx

    def _read_prefix(self) -> None:
        for at in range(0, len(self.prefix), self.n_batch):
            self._clear_batch()
            for pos in range(at, min(at + self.n_batch, len(self.prefix))):
                self._add(self.prefix[pos], pos, self._prefix_seq, False)
            if self._lib.llama_decode(self._ctx, self._batch) != 0:
                raise RuntimeError("llama.cpp could not read the local model's prompt prefix")

    def close(self) -> None:
        lib = self._lib
        for slot in self._slots:
            if slot.run is not None:
                lib.llama_sampler_free(slot.run.sampler)
                slot.run = None
        lib.llama_batch_free(self._batch)
        lib.llama_free(self._ctx)
        lib.llama_model_free(self._model)

    # -- the loop ----------------------------------------------------------------------------

    def serve(self, queue: FairQueue) -> None:
        """Run jobs until the queue closes; then fail the ones still running."""
        while not queue.closed:
            try:
                self._drop_abandoned()
                self._admit(queue)
                if self.busy:
                    self._step()
                else:
                    queue.wait()
            except Exception as exc:  # an engine bug fails the requests in flight, not the engine
                log.exception("local model step failed")
                self._fail_running(UpstreamError(f"the local model failed: {type(exc).__name__}", retryable=True))
        for slot in self._slots:
            if slot.run is not None:
                slot.run.job.emit(("error", UpstreamError("the local model shut down", retryable=True)))
                self._release(slot)

    @property
    def busy(self) -> bool:
        return any(slot.run is not None for slot in self._slots)

    def cached(self) -> dict[int, int]:
        """Tokens each account has in the cache (its longest sequence), for tests and metrics."""
        found: dict[int, int] = {}
        for slot in self._slots:
            if isinstance(slot.owner, int):
                found[slot.owner] = max(found.get(slot.owner, 0), len(slot.cached))
        return found

    def _drop_abandoned(self) -> None:
        for slot in self._slots:
            if slot.run is not None and slot.run.job.cancelled.is_set():
                self._release(slot)

    # -- admission and the cache ---------------------------------------------------------------

    def _cells(self, run: _Run) -> int:
        return len(run.job.prompt) - len(self.prefix) + run.job.max_new_tokens

    def _fits(self, job: Job) -> bool:
        running = sum(self._cells(s.run) for s in self._slots if s.run is not None)
        need = len(job.prompt) - len(self.prefix) + job.max_new_tokens
        return len(self.prefix) + running + need <= self.n_ctx

    def _admit(self, queue: FairQueue) -> None:
        while any(slot.run is None for slot in self._slots):
            job = queue.take_nowait(self._fits)
            if job is None:
                return
            self._start(self._slot_for(job), job)

    def _slot_for(self, job: Job) -> _Slot:
        """The idle sequence this job should use: its account's cached conversation that shares
        the most with this prompt, else an empty one, else the least recently used."""
        idle = [slot for slot in self._slots if slot.run is None]
        if job.account is not None:
            own = [(s, _common_prefix(s.cached, job.prompt)) for s in idle if s.owner == job.account]
            best = max(own, key=lambda pair: pair[1], default=None)
            if best is not None and best[1] >= len(self.prefix) + _WORTH_REUSING:
                return best[0]
        empty = [slot for slot in idle if not slot.cached]
        return empty[0] if empty else min(idle, key=lambda slot: slot.used_at)

    def _start(self, slot: _Slot, job: Job) -> None:
        lib = self._lib
        if slot.owner != job.account or job.account is None:
            # Another account's (or nobody's) conversation: keep nothing but the shared prefix.
            lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
            lib.llama_memory_seq_cp(self._mem, self._prefix_seq, slot.seq, -1, -1)
            slot.cached = list(self.prefix)
            slot.owner = job.account if job.account is not None else _NOBODY
        keep = min(_common_prefix(slot.cached, job.prompt), len(job.prompt) - 1)
        if keep < len(slot.cached):
            lib.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
            del slot.cached[keep:]
        self._make_room(slot, job)
        slot.run = _Run(
            job=job, sampler=self._sampler(job, 0), fed=keep,
            cached_tokens=max(0, keep - len(self.prefix)), answer=AnswerText(job.stops, job.openers),
        )

    def _make_room(self, chosen: _Slot, job: Job) -> None:
        """Forget idle conversations, least recently used first, until this job's worst case fits."""
        def used() -> int:
            total = len(self.prefix)
            for slot in self._slots:
                if slot.run is not None:
                    total += self._cells(slot.run)
                elif slot is not chosen:
                    total += max(0, len(slot.cached) - len(self.prefix))
            return total

        need = len(job.prompt) - len(self.prefix) + job.max_new_tokens
        idle = sorted((s for s in self._slots if s.run is None and s is not chosen and s.cached), key=lambda s: s.used_at)
        while idle and used() + need > self.n_ctx:
            self._forget(idle.pop(0))

    def _forget(self, slot: _Slot) -> None:
        self._lib.llama_memory_seq_rm(self._mem, slot.seq, -1, -1)
        slot.cached = []
        slot.owner = _NOBODY

    def _release(self, slot: _Slot) -> None:
        """The slot's job is over; its conversation stays cached for the same account."""
        assert slot.run is not None
        self._lib.llama_sampler_free(slot.run.sampler)
        slot.run = None
        slot.used_at = time.monotonic()

    # -- one step --------------------------------------------------------------------------------

    def _clear_batch(self) -> None:
        self._batch.n_tokens = 0

    def _add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        b = self._batch
        i = b.n_tokens
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        b.n_tokens = i + 1
        return i

    def _step(self) -> None:
        self._clear_batch()
        outputs: list[tuple[_Slot, int]] = []
        reading: list[_Slot] = []
        for slot in self._slots:
            run = slot.run
            if run is None:
                continue
            if run.next_token is not None:
                outputs.append((slot, self._add(run.next_token, len(slot.cached), slot.seq, True)))
                slot.cached.append(run.next_token)
                run.next_token = None
            else:
                reading.append(slot)
        budget = self.n_batch - len(outputs)
        if outputs:
            budget = min(budget, PREFILL_SLICE)
        for slot in sorted(reading, key=lambda s: len(s.run.job.prompt) - s.run.fed):  # type: ignore[union-attr]
            run = slot.run
            assert run is not None
            prompt = run.job.prompt
            take = min(len(prompt) - run.fed, budget)
            if take <= 0:
                break
            for pos in range(run.fed, run.fed + take):
                last = pos == len(prompt) - 1
                index = self._add(prompt[pos], pos, slot.seq, last)
                if last:
                    outputs.append((slot, index))
            slot.cached.extend(prompt[run.fed : run.fed + take])
            run.fed += take
            budget -= take
        status = self._lib.llama_decode(self._ctx, self._batch)
        if status != 0:
            log.error("llama_decode failed with status %d", status)
            self._fail_running(UpstreamError(f"the local model failed (llama_decode {status})", retryable=True))
            return
        # In the order the jobs were admitted, so that replies of one step reach their clients
        # first come, first served.
        outputs.sort(key=lambda pair: pair[0].run.job.queued_at)  # type: ignore[union-attr]
        for slot, index in outputs:
            if slot.run is not None:
                self._sample(slot, index)

    def _fail_running(self, error: UpstreamError) -> None:
        """Every running job fails (uncharged where nothing was produced yet) and its sequence's
        cache is dropped, since what it holds is no longer known."""
        for slot in self._slots:
            if slot.run is not None:
                slot.run.job.emit(("error", error))
                self._release(slot)
                self._forget(slot)

    # -- sampling --------------------------------------------------------------------------------

    def _sampler(self, job: Job, attempt: int) -> Any:
        lib = self._lib
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        chain = lib.llama_sampler_chain_init(params)
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_k(TOP_K))
        lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_penalties(self.vocab.n_vocab, PENALTY_LAST_N, REPEAT_PENALTY, 0.0, 0.0))
        if job.temperature <= 0 and attempt == 0:
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
        else:  # a redraw of a greedy request must not make the same choice again: sample it
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_top_p(job.top_p, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_min_p(MIN_P, 1))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_temp(max(job.temperature, 0.5)))
            lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_dist((job.seed + attempt) & 0xFFFFFFFF))
        return chain

    def _sample(self, slot: _Slot, index: int) -> None:
        run = slot.run
        assert run is not None
        lib = self._lib
        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(self._ctx, index), shape=(self.vocab.n_vocab,))
        logits[self.vocab.banned] = -np.inf
        if not run.answer.started:
            logits[self.vocab.not_first] = -np.inf
            if run.first_bans:
                logits[run.first_bans] = -np.inf
        token = int(lib.llama_sampler_sample(run.sampler, self._ctx, index))
        if run.first is None:
            run.first = token
        if token in self.vocab.eog:
            self._finish(slot, "stop")
            return
        run.generated += 1
        text = run.answer.feed(run.decoder.decode(self.vocab.piece(token)))
        if text and not run.job.emit(("text", text)):
            self._release(slot)
            return
        if run.answer.stopped or run.loop.push(token):
            self._finish(slot, "stop")
        elif run.generated >= run.job.max_new_tokens:
            self._finish(slot, "length")
        else:
            run.next_token = token

    def _finish(self, slot: _Slot, reason: str) -> None:
        run = slot.run
        assert run is not None
        if not run.answer.stopped:
            rest = run.answer.feed(run.decoder.decode(b"", final=True)) + run.answer.finish()
            if rest and not run.job.emit(("text", rest)):
                self._release(slot)
                return
        if run.answer.started:
            run.job.emit(("done", reason, run.generated, run.cached_tokens))
            self._release(slot)
        else:
            self._redraw(slot)

    def _redraw(self, slot: _Slot) -> None:
        """An empty reply: draw it again from the end of the prompt, its first token banned."""
        run = slot.run
        assert run is not None
        lib = self._lib
        if run.first is not None:
            run.first_bans.append(run.first)
        attempt = run.attempt + 1
        if attempt >= MAX_ATTEMPTS:
            run.job.emit(("error", UpstreamError("the local model gave an empty reply; try again", retryable=True)))
            self._release(slot)
            return
        job = run.job
        keep = len(job.prompt) - 1  # the last prompt token is read again, for its logits
        lib.llama_memory_seq_rm(self._mem, slot.seq, keep, -1)
        del slot.cached[keep:]
        lib.llama_sampler_free(run.sampler)
        slot.run = _Run(
            job=job, sampler=self._sampler(job, attempt), fed=keep, cached_tokens=run.cached_tokens,
            answer=AnswerText(job.stops, job.openers), attempt=attempt, first_bans=run.first_bans,
        )
