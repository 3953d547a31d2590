"""How well the embedded model answers everyday questions, per prompt format and sampling choice.

    .venv/bin/python -m bench.local_model_eval [--samples 5] [--variants qa-examples,qa] [--weights gemma-3-270m]

Runs every question of bench/local_model_questions.json `--samples` times (once for greedy
variants) through LocalModelProvider, exactly as the gateway would (max_tokens 48 by default),
and scores each reply automatically: right when it contains an accepted answer (see the data
file's "about"). Beside the score it counts the replies that are empty, that contain markup
(`<start_of_...>`, `<end_of_...>`, `<unused...>`), or that ran to max_tokens. Prints a table per
variant and writes the replies and scores as JSON under bench/results/.

Not a timed test: on a 2-core machine 32 questions x 5 samples x 14 variants take half an hour or more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import LocalModelConfig
from switchboard.core.types import ChatMessage, ChatRequest, Finish, TextDelta
from switchboard.providers.local import engine as engine_module
from switchboard.providers.local.prompt import FORMATS, PromptFormat, TranscriptFormat
from switchboard.providers.local_model import LocalModelProvider
from switchboard.providers.model_asset import PACKAGED_WEIGHTS

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ROOT / "bench" / "local_model_questions.json"
MARKUP = re.compile(r"<(start|end)_of_|<unused\d*>|<\|im_(start|end)\|>")


@dataclass(frozen=True)
class Variant:
    """One way of running the model: prompt format, sampling and stopping."""

    name: str
    fmt: PromptFormat
    temperature: float = 0.7
    top_p: float = 0.95
    repeat_penalty: float = engine_module.REPEAT_PENALTY
    note: str = ""


def _without_blank_line_stop(fmt: PromptFormat) -> PromptFormat:
    assert isinstance(fmt, TranscriptFormat)
    return replace(fmt, name=fmt.name + "-no-blank-stop", blank_line_stops=False)


def _qa(name: str, *examples: tuple[str, str]) -> TranscriptFormat:
    """A Question/Answer transcript after other worked examples (tried beside the shipped ones)."""
    preamble = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in examples)
    return TranscriptFormat(name, user="Question", assistant="Answer", tool="Tool result", preamble=preamble)


_INTRO = TranscriptFormat("qa-intro", user="Question", assistant="Answer", tool="Tool result",
                          preamble="Short, correct answers to everyday questions.\n\n")
_CAIRO, _ANIMALS, _HI = ("What is the capital of Egypt?", "Cairo."), ("Name two animals.", "A cat and a dog."), \
    ("Hi!", "Hello! How can I help you?")
_PLAIN = _qa("qa-examples-plain", _CAIRO, _ANIMALS, _HI)
_PET = _qa("qa-examples-pet", _CAIRO, _ANIMALS, ("Count to five.", "1, 2, 3, 4, 5."), _HI,
           ("My dog is called Rex.", "Rex is a good name for a dog.\nQuestion: What is my dog called?\n"
                                     "Answer: Your dog is called Rex."))
_PIANO = _qa("qa-examples-piano", _CAIRO, _ANIMALS, _HI,
             ("I am learning to play the piano.", "That is a lovely thing to learn.\nQuestion: What am I learning to play?\n"
                                                  "Answer: You are learning to play the piano."))


def variants(weights: str) -> dict[str, Variant]:
    """The variants worth comparing for these weights; the first is the shipped default."""
    if weights == "smollm2-135m-instruct":
        chatml = FORMATS["chatml"]
        found = [
            Variant("chatml-greedy", chatml, temperature=0.0, note="its own chat template, greedy (the default)"),
            Variant("chatml", chatml),
            Variant("qa-examples-greedy", FORMATS["qa-examples"], temperature=0.0, note="Gemma's base-model transcript"),
        ]
    else:
        qa, examples = FORMATS["qa"], FORMATS["qa-examples"]
        found = [
            Variant("qa-examples-greedy", examples, temperature=0.0, note="the default: worked examples, greedy"),
            Variant("qa-examples", examples, note="the same, sampled at temperature 0.7"),
            Variant("qa-examples-t0.3", examples, temperature=0.3),
            Variant("qa-examples-no-penalty", examples, repeat_penalty=1.0),
            Variant("qa-examples-no-blank-stop-greedy", _without_blank_line_stop(examples), temperature=0.0,
                    note="a blank line does not end the reply"),
            Variant("qa-greedy", qa, temperature=0.0, note="Question/Answer, no examples (the format before)"),
            Variant("qa", qa),
            Variant("qa-intro-greedy", _INTRO, temperature=0.0, note="a one-line preamble instead of examples"),
            Variant("qa-examples-plain-greedy", _PLAIN, temperature=0.0, note="three examples, no follow-up"),
            Variant("qa-examples-pet-greedy", _PET, temperature=0.0, note="other examples"),
            Variant("qa-examples-piano-greedy", _PIANO, temperature=0.0, note="other examples"),
            Variant("user-assistant-greedy", FORMATS["user-assistant"], temperature=0.0),
            Variant("user-assistant", FORMATS["user-assistant"]),
            Variant("gemma-turns", FORMATS["gemma-turns"], note="Gemma's chat template (made for the -it model)"),
        ]
    return {v.name: v for v in found}


@dataclass
class Outcome:
    question: str
    kind: str
    reply: str
    right: bool
    finish: str
    error: str | None = None
    flags: list[str] = field(default_factory=list)


def _words(text: str) -> set[str]:
    return {w.casefold() for w in re.findall(r"\w+", text)}


def _has(reply: str, answer: str) -> bool:
    if " " in answer:
        return answer.casefold() in reply.casefold()
    return answer.casefold() in _words(reply)


def score(question: dict[str, Any], reply: str) -> bool:
    if "accept" in question:
        return any(_has(reply, answer) for answer in question["accept"])
    found = {w.casefold() for w in question["from"] if _has(reply, w)}
    return len(found) >= question["at_least"]


def flags_of(reply: str, finish: str) -> list[str]:
    flags = []
    if not reply.strip():
        flags.append("empty")
    if MARKUP.search(reply):
        flags.append("markup")
    if finish == "length":
        flags.append("capped")
    return flags


async def ask(provider: LocalModelProvider, spec: ModelSpec, question: dict[str, Any], variant: Variant,
              account: int, max_tokens: int) -> Outcome:
    messages = [ChatMessage(m["role"], m["content"]) for m in question["messages"]]
    request = ChatRequest(spec.name, messages, max_tokens=max_tokens, temperature=variant.temperature,
                          top_p=variant.top_p, account_id=account)
    parts: list[str] = []
    finish = "error"
    error = None
    try:
        async for event in provider.stream(spec, request):
            if isinstance(event, TextDelta):
                parts.append(event.text)
            elif isinstance(event, Finish):
                finish = event.reason
    except Exception as exc:  # an error is a wrong answer, and is shown
        error = f"{type(exc).__name__}: {exc}"
    reply = "".join(parts)
    return Outcome(question["id"], question["kind"], reply, score(question, reply) and error is None, finish, error,
                   flags_of(reply, finish) + (["error"] if error else []))


async def run_variant(variant: Variant, weights: str, questions: list[dict[str, Any]], samples: int,
                      max_tokens: int, cache: Path, threads: int | None) -> tuple[list[Outcome], float]:
    engine_module.REPEAT_PENALTY = variant.repeat_penalty
    config = LocalModelConfig(weights=weights, context_window=2048, threads=threads)  # type: ignore[arg-type]
    provider = LocalModelProvider(config, cache, prompt_format=variant.fmt)
    spec = ModelSpec(name=config.name, provider="local", upstream_name=config.name, context_window=2048,
                     input_usd_per_mtok=Decimal(0), output_usd_per_mtok=Decimal(0), max_output_tokens=max_tokens)
    await provider.start()
    try:
        n = 1 if variant.temperature == 0 else samples
        started = time.perf_counter()
        jobs = [ask(provider, spec, q, variant, account=i * 1000 + k, max_tokens=max_tokens)
                for i, q in enumerate(questions) for k in range(n)]
        outcomes = list(await asyncio.gather(*jobs))
        return outcomes, time.perf_counter() - started
    finally:
        await provider.aclose()
        engine_module.REPEAT_PENALTY = Variant.repeat_penalty


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    by_question: dict[str, list[bool]] = defaultdict(list)
    kind_of: dict[str, str] = {}
    for o in outcomes:
        by_question[o.question].append(o.right)
        kind_of[o.question] = o.kind
    per_question = {q: sum(r) / len(r) for q, r in by_question.items()}
    kinds: dict[str, list[float]] = defaultdict(list)
    for q, s in per_question.items():
        kinds[kind_of[q]].append(s)
    total = len(outcomes)
    return {
        "score": sum(per_question.values()) / len(per_question),
        "by_kind": {k: sum(v) / len(v) for k, v in sorted(kinds.items())},
        "per_question": per_question,
        "empty": sum("empty" in o.flags for o in outcomes) / total,
        "markup": sum("markup" in o.flags for o in outcomes) / total,
        "capped": sum("capped" in o.flags for o in outcomes) / total,
        "errors": sum("error" in o.flags for o in outcomes) / total,
        "replies": total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=5, help="replies per question for sampled variants")
    parser.add_argument("--variants", default="", help="comma-separated names (default: all for these weights)")
    parser.add_argument("--weights", default="gemma-3-270m", choices=sorted(PACKAGED_WEIGHTS))
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--cache", type=Path, default=ROOT / "data" / "models")
    parser.add_argument("--show", action="store_true", help="print every reply")
    args = parser.parse_args()

    questions = json.loads(QUESTIONS.read_text())["questions"]
    available = variants(args.weights)
    chosen = [available[name] for name in args.variants.split(",") if name] if args.variants else list(available.values())
    results: dict[str, Any] = {}
    kinds = sorted({q["kind"] for q in questions})
    print(f"{len(questions)} questions, weights {args.weights}, max_tokens {args.max_tokens}")
    print(f"{'variant':28} {'score':>6} " + " ".join(f"{k[:8]:>8}" for k in kinds) + "  empty markup capped  time")
    for variant in chosen:
        outcomes, elapsed = asyncio.run(run_variant(variant, args.weights, questions, args.samples, args.max_tokens,
                                                    args.cache, args.threads))
        summary = summarize(outcomes)
        results[variant.name] = {"note": variant.note, "format": variant.fmt.name, "temperature": variant.temperature,
                                 "repeat_penalty": variant.repeat_penalty, "seconds": elapsed, **summary,
                                 "outcomes": [o.__dict__ for o in outcomes]}
        print(f"{variant.name:28} {summary['score']:6.2f} "
              + " ".join(f"{summary['by_kind'][k]:8.2f}" for k in kinds)
              + f"  {summary['empty']:5.1%} {summary['markup']:6.1%} {summary['capped']:6.1%} {elapsed:5.0f}s")
        if args.show:
            for o in outcomes:
                print(f"    {'+' if o.right else '-'} {o.question:18} {o.reply!r}" + (f" [{o.error}]" if o.error else ""))
        sys.stdout.flush()
    out = ROOT / "bench" / "results" / f"local_model_eval-{args.weights}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"weights": args.weights, "samples": args.samples, "max_tokens": args.max_tokens,
                               "variants": results}, indent=1))
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
