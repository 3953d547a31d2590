"""How well long-term memory recalls, and how fast: LoCoMo's long conversations, and one user
with 10,000 memories.

    .venv/bin/python -m bench.memory [--data ../shared/data/locomo-dev/locomo-dev.json] [--k 10]
        [--scale 10000] [--scale-only] [--random-vectors] [--out bench/results/memory.json]

Quality: each conversation is imported as one user's history, exactly as
`switchboard memory import` does it (one memory per turn: role, speaker's name, the turn's
dia_id as source_id, the session's time; an image's caption appended to its turn as
"[shares a photo: ...]"), and each question of categories 1 to 4 with evidence is asked through
the search that `switchboard memory search --batch` runs. recall@k: the share of a question's
evidence turns among the source_ids of the top k results; hit@k: whether any is. By category
(1 multi-hop, 2 temporal, 3 open-domain, 4 single-hop) and overall, with each search's latency
(the query's embedding included). The data stays where it is: nothing of it is copied.

Scale: one user with `--scale` memories (the conversations' turns repeated, each copy a thread
of its own and a year later), searched warm (p50/p95 over the questions), cold (the index
dropped, then the search, the query's embedding included: p50/p95 over 10 cold searches) two
ways: loaded from its encrypted snapshot (memory.snapshot; `cold_snapshot_ms`, with how many of
the 10 were loaded from it) and built in full from every memory (`cold_ms`), and the index's size
in RAM either way. Everything runs on one thread (onnxruntime and numpy), as a server process's
search does. `--random-vectors` (with --scale-only) puts random unit vectors in place of the
model's embeddings (the same sizes): the scale test then takes seconds instead of minutes of
embedding, for A/B runs of the index's code; its search times leave out the query's embedding
(about 5 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "locomo-dev" / "locomo-dev.json"
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


def session_time(text: str) -> datetime:
    return datetime.strptime(text.strip(), "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def evidence_ids(evidence: list[str]) -> list[str]:
    """dia_ids, with LoCoMo's malformed entries mended ("D8:6; D9:17", "D30:05")."""
    found = []
    for item in evidence:
        for part in re.split(r"[;\s]+", item):
            match = re.match(r"D(\d+):0*(\d+)$", part.strip())
            if match:
                found.append(f"D{int(match.group(1))}:{int(match.group(2))}")
    return found


def import_lines(sample: dict[str, Any]) -> list[str]:
    """The conversation as `switchboard memory import` JSON lines."""
    conv = sample["conversation"]
    lines = []
    n = 1
    while f"session_{n}" in conv:
        at = session_time(conv[f"session_{n}_date_time"])
        for turn in conv[f"session_{n}"]:
            text = turn["text"]
            if turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            role = "user" if turn["speaker"] == conv["speaker_a"] else "assistant"
            lines.append(json.dumps({"role": role, "name": turn["speaker"], "content": text,
                                     "source_id": turn["dia_id"], "created_at": at.isoformat()}))
        n += 1
    return lines


def questions(sample: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for qa in sample["qa"]:
        evidence = evidence_ids(qa.get("evidence") or [])
        if qa["category"] in CATEGORIES and evidence:
            found.append({"question": qa["question"], "evidence": evidence, "category": qa["category"]})
    return found


class RandomEmbedder:
    """Random unit vectors of the model's size, for `--random-vectors`."""

    def __init__(self) -> None:
        import numpy as np

        self._rng = np.random.default_rng(0)

    def embed(self, texts: list[str]) -> Any:
        import numpy as np

        from switchboard.memory.embedder import DIMENSIONS, Embedded

        vectors = self._rng.standard_normal((len(texts), DIMENSIONS)).astype(np.float32)
        return Embedded(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), 0)


def resident_mb() -> float:
    """This process's resident memory (Linux; 0 elsewhere), after a collection and giving freed
    heap back to the system, so that what is left is what is held."""
    import ctypes
    import gc

    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def held_ram_mb(make_service: Callable[[], Any], uid: int, extra: int = 3) -> float:
    """What one more cached index of this user holds in resident memory (MB): `extra` indexes
    held at once, each in a service (cache) of its own, after a first one that pays the one-time
    costs (code paths, allocator pools)."""
    held = [make_service()]
    held[0].index_sync(uid)
    before = resident_mb()
    for _ in range(extra):
        held.append(make_service())
        held[-1].index_sync(uid)
    return (resident_mb() - before) / extra


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else 0.0


class Setup:
    """A fresh database in a temporary directory, its key ring and the memory service."""

    def __init__(self, workdir: Path) -> None:
        from switchboard.core.config import Settings
        from switchboard.crypto import keyring_for
        from switchboard.memory.service import MemoryService
        from switchboard.store.db import make_engine
        from switchboard.store.migrate import upgrade

        self.settings = Settings(data_dir=workdir, local_model={"enabled": False})
        self.engine = make_engine(self.settings.resolved_database_url)
        upgrade(self.engine)
        self.keyring = keyring_for(self.settings, self.engine)
        self.memory = MemoryService(self.engine, self.keyring, self.settings.memory)

    def user(self, email: str) -> int:
        from switchboard.accounts.users import create_user
        from switchboard.inference.runtime import make_ledger

        ledger = make_ledger(self.settings)
        with self.engine.begin() as conn:
            return create_user(conn, ledger, email, "free").id


async def quality(setup: Setup, data: list[dict[str, Any]], k: int) -> dict[str, Any]:
    from switchboard.memory.importer import import_items, parse_lines

    recall: dict[int, list[float]] = defaultdict(list)
    hits: dict[int, list[float]] = defaultdict(list)
    latencies: list[float] = []
    imports = []
    for sample in data:
        uid = setup.user(f"{sample['sample_id']}@bench.invalid")
        lines = import_lines(sample)
        started = time.perf_counter()
        kept = (await import_items(setup.memory, uid, parse_lines(lines))).kept
        imports.append({"conversation": sample["sample_id"], "lines": kept, "seconds": time.perf_counter() - started})
        await asyncio.to_thread(setup.memory.index_sync, uid)  # warm, as a server that searched once
        for q in questions(sample):
            started = time.perf_counter()
            vector = setup.memory.embedder.embed([q["question"]]).vectors[0]
            found = setup.memory.search_sync(uid, q["question"], vector, k)
            latencies.append((time.perf_counter() - started) * 1000)
            got = {sid for hit in found for sid in hit.source_ids}
            evidence = set(q["evidence"])
            recall[q["category"]].append(len(evidence & got) / len(evidence))
            hits[q["category"]].append(float(bool(evidence & got)))
    every_r = [x for v in recall.values() for x in v]
    every_h = [x for v in hits.values() for x in v]
    return {
        "k": k, "questions": len(every_r), f"recall@{k}": statistics.mean(every_r), f"hit@{k}": statistics.mean(every_h),
        "by_category": {CATEGORIES[c]: {"questions": len(recall[c]), f"recall@{k}": statistics.mean(recall[c]),
                                        f"hit@{k}": statistics.mean(hits[c])} for c in sorted(recall)},
        "search_ms": {"p50": pct(latencies, 0.5), "p95": pct(latencies, 0.95)},
        "imports": imports,
    }


async def scale(setup: Setup, data: list[dict[str, Any]], size: int, k: int) -> dict[str, Any]:
    from switchboard.memory.importer import import_items, parse_lines

    uid = setup.user("scale@bench.invalid")
    base = []
    for sample in data:  # each turn's source_id made unique (the conversations' dia_ids repeat)
        for raw in import_lines(sample):
            line = json.loads(raw)
            line["source_id"] = f"{sample['sample_id']}/{line['source_id']}"
            base.append(json.dumps(line))
    copies = []
    copy = 0
    while len(copies) < size:  # each copy a thread of its own, a year later
        batch = []
        for raw in base[: size - len(copies)]:
            line = json.loads(raw)
            line["created_at"] = (datetime.fromisoformat(line["created_at"]) + timedelta(days=365 * copy)).isoformat()
            line["source_id"] = f"{line['source_id']}#{copy}"
            batch.append(json.dumps(line))
        copies.extend(batch)
        copy += 1
    started = time.perf_counter()
    items = []
    for n in range(0, len(copies), len(base)):
        items.extend(parse_lines(copies[n:n + len(base)]))
    await import_items(setup.memory, uid, items)
    import_s = time.perf_counter() - started
    asked = [q["question"] for sample in data for q in questions(sample)][:200]
    vectors = setup.memory.embedder.embed(asked).vectors

    def cold_searches(service: Any) -> tuple[list[float], float]:
        """10 cold searches (the index dropped before each); the index's RAM after the last."""
        took = []
        for n in range(10):
            service.cache.drop(uid)
            started = time.perf_counter()
            query_vector = service.embedder.embed([asked[n]]).vectors[0]
            service.search_sync(uid, asked[n], query_vector, k)
            took.append((time.perf_counter() - started) * 1000)
        return took, service.index_sync(uid).ram_bytes / 2**20

    from sqlalchemy import text as sql

    from switchboard.memory.service import MemoryService

    # Built in full: a process that neither reads nor writes snapshots (all there was before them).
    full = MemoryService(setup.engine, setup.keyring, setup.settings.memory.model_copy(
        update={"snapshot_min_memories": 0}), embedder=setup.memory.embedder)
    cold, full_mb = cold_searches(full)
    snapshot: dict[str, Any] = {}
    writer = getattr(setup.memory, "snapshots", None)
    if writer is not None:
        setup.memory.cache.drop(uid)
        setup.memory.index_sync(uid)  # built in full; its snapshot written on the writer's thread
        started = time.perf_counter()
        writer.flush()
        write_ms = (time.perf_counter() - started) * 1000
        thaws = setup.memory.cache.thaws
        cold_snap, snap_mb = cold_searches(setup.memory)
        with setup.engine.connect() as conn:
            size = conn.execute(sql("SELECT length(snapshot_ct) FROM memory_snapshots WHERE user_id = :u"),
                                {"u": uid}).scalar()
        snapshot = {"cold_snapshot_ms": {"p50": pct(cold_snap, 0.5), "p95": pct(cold_snap, 0.95)},
                    "cold_from_snapshot": setup.memory.cache.thaws - thaws, "snapshot_mb": (size or 0) / 2**20,
                    "snapshot_write_ms": write_ms, "index_from_snapshot_mb": snap_mb}
    warm = []
    for question, vector in zip(asked, vectors):
        started = time.perf_counter()
        query_vector = setup.memory.embedder.embed([question]).vectors[0]
        setup.memory.search_sync(uid, question, query_vector, k)
        warm.append((time.perf_counter() - started) * 1000)
    index = setup.memory.index_sync(uid)

    def service(snapshots: bool) -> Any:
        config = setup.settings.memory if snapshots else setup.settings.memory.model_copy(
            update={"snapshot_min_memories": 0})
        return MemoryService(setup.engine, setup.keyring, config, embedder=setup.memory.embedder)

    held = {"built": held_ram_mb(lambda: service(False), uid)}
    if writer is not None:
        held["from_snapshot"] = held_ram_mb(lambda: service(True), uid)
    return {"memories": len(index), "import_s": import_s, "resident_mb_per_index": held,
            "warm_ms": {"p50": pct(warm, 0.5), "p95": pct(warm, 0.95)},
            "cold_ms": {"p50": pct(cold, 0.5), "p95": pct(cold, 0.95)},
            "index_mb": index.ram_bytes / 2**20, "index_built_mb": full_mb, **snapshot,
            "random_vectors": isinstance(setup.memory.embedder, RandomEmbedder)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--scale", type=int, default=10_000, help="memories of the scale test (0: skip it)")
    parser.add_argument("--scale-only", action="store_true",
                        help="skip the questions (quality); the other figures of an existing --out are kept")
    parser.add_argument("--random-vectors", action="store_true",
                        help="random unit vectors in place of the model's embeddings (with --scale-only; A/B runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    if args.scale_only and not args.scale:
        sys.exit("--scale-only needs --scale above 0")
    if args.random_vectors and not args.scale_only:
        sys.exit("--random-vectors is for the scale test alone: add --scale-only")
    if not args.data.is_file():
        sys.exit(f"no data at {args.data} (LoCoMo's development split: ../shared/data/locomo-dev/)")
    data = json.loads(args.data.read_text())
    with tempfile.TemporaryDirectory(prefix="sb-memory-bench-") as tmp:
        setup = Setup(Path(tmp))
        if args.random_vectors:
            setup.memory.embedder = RandomEmbedder()  # type: ignore[assignment]
        result: dict[str, Any] = {"data": str(args.data)}
        if args.scale_only:
            if args.out.is_file():
                result = json.loads(args.out.read_text()) | result
        else:
            result["quality"] = q = asyncio.run(quality(setup, data, args.k))
            print(f"recall@{args.k} {q[f'recall@{args.k}']:.3f}  hit@{args.k} {q[f'hit@{args.k}']:.3f}  ({q['questions']} "
                  f"questions; search p50 {q['search_ms']['p50']:.1f} ms, p95 {q['search_ms']['p95']:.1f} ms)")
            for name, row in q["by_category"].items():
                print(f"  {name:12} {row['questions']:4} questions  recall@{args.k} {row[f'recall@{args.k}']:.3f}  "
                      f"hit@{args.k} {row[f'hit@{args.k}']:.3f}")
        if args.scale:
            s = result["scale"] = asyncio.run(scale(setup, data, args.scale, args.k))
            print(f"{s['memories']} memories of one user: warm p50 {s['warm_ms']['p50']:.1f} ms, p95 "
                  f"{s['warm_ms']['p95']:.1f} ms; cold (built in full) p50 {s['cold_ms']['p50']:.0f} ms, p95 "
                  f"{s['cold_ms']['p95']:.0f} ms; index {s['index_mb']:.1f} MB; import {s['import_s']:.1f} s")
            if "cold_snapshot_ms" in s:
                print(f"  cold from the snapshot ({s['cold_from_snapshot']} of 10 loaded from it): p50 "
                      f"{s['cold_snapshot_ms']['p50']:.0f} ms, p95 {s['cold_snapshot_ms']['p95']:.0f} ms; snapshot "
                      f"{s['snapshot_mb']:.1f} MB, written in {s['snapshot_write_ms']:.0f} ms off the request path; "
                      f"index {s['index_from_snapshot_mb']:.1f} MB")
            print("  resident memory one more cached index holds: " + ", ".join(
                f"{how.replace('_', ' ')} {mb:.1f} MB" for how, mb in s["resident_mb_per_index"].items()))
        setup.engine.dispose()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
