"""`switchboard memory ...`: a user's long-term memory for operators and for evaluation.

    switchboard memory import EMAIL FILE.jsonl [--extract]
    switchboard memory search EMAIL "QUERY" [--limit K] [--json]
    switchboard memory search EMAIL --batch FILE.jsonl --limit K --json
    switchboard memory list EMAIL [--json]
    switchboard memory forget EMAIL (ID | --all)

Import and search call no chat model and charge nothing (the embedding model runs here);
`--extract` also runs fact extraction, a metered model call, where a model is configured. With
`--json`, standard output carries only JSON lines; progress and logs go to standard error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape
from rich.table import Table

from switchboard.cli.common import err, error_line, fail, open_store, out

memory_app = typer.Typer(help="Users' long-term memory: import, search, list, forget.", no_args_is_help=True)


def _service(store: Any) -> Any:
    from switchboard.cli.crypto import keyring_or_exit
    from switchboard.memory.service import MemoryService

    return MemoryService(store.engine, keyring_or_exit(store.settings, store.engine), store.settings.memory)


def _quiet_logs() -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)


def result_json(hit: Any) -> dict[str, Any]:
    from switchboard.api.memories import hit_json

    body = hit_json(hit)
    return {"id": body["id"], "text": body["text"], "source_ids": body["source_ids"], "score": body["score"],
            "created_at": body["created_at"]}


@memory_app.command("import")
def memory_import(
    email: str,
    file: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True,
                                help="JSON lines: role, name, content, source_id, created_at"),
    extract: bool = typer.Option(False, "--extract", help="Also extract facts with a model (metered, charged)."),
) -> None:
    """Import a history: every line, user and assistant alike, becomes a memory of the user."""
    from rich.progress import Progress

    from switchboard.core.errors import SwitchboardError
    from switchboard.memory.importer import Imported, import_items, parse_lines

    _quiet_logs()
    store = open_store()
    user = store.user(email)
    memory = _service(store)
    try:
        items = parse_lines(file.read_text(encoding="utf-8").splitlines())
    except SwitchboardError as exc:
        error_line(f"{file}: {exc.message}")
    except UnicodeDecodeError:
        error_line(f"{file} is not UTF-8 text")

    async def run() -> Imported:
        with Progress(console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task("importing", total=len(items))
            return await import_items(memory, user.id, items, progress=lambda n: progress.advance(task, n))

    try:
        imported = asyncio.run(run())
    except SwitchboardError as exc:
        fail(exc)
    err.print(f"imported {imported.kept} memories for {escape(user.email)}"
              + (f" ({imported.skipped} lines already imported, skipped)" if imported.skipped else ""))
    if extract:
        facts = asyncio.run(_extract(store, user, imported.fresh))
        err.print(f"extracted {facts} facts")


async def _extract(store: Any, user: Any, items: list[Any]) -> int:
    from datetime import datetime, timezone

    from switchboard.cli.crypto import keyring_or_exit
    from switchboard.inference.runtime import Runtime
    from switchboard.memory.extraction import Said, extract
    from switchboard.memory.service import MemoryService

    runtime = Runtime(store.settings)
    await runtime.start()
    try:
        if not store.settings.catalog:
            err.print("no model is configured here: facts were not extracted")
            return 0
        memory = MemoryService(store.engine, keyring_or_exit(store.settings, store.engine), store.settings.memory)
        said = [Said((i.meta["source_ids"] or [f"line{n + 1}"])[0], i.meta["role"], i.text, i.created_ms,
                     i.meta["thread"]) for n, i in enumerate(items)]
        total = 0
        for start in range(0, len(said), 40):  # one call per 40 messages
            found = await extract(runtime.inference, memory, user.id, user.plan, said[start:start + 40],
                                  now=datetime.now(timezone.utc))
            total += len(found.facts)
        return total
    finally:
        await runtime.stop()


@memory_app.command("search")
def memory_search(
    email: str,
    query: Optional[str] = typer.Argument(None, help="What to look for"),
    limit: int = typer.Option(10, "--limit", min=1, max=100, help="Results per query."),
    batch: Optional[Path] = typer.Option(None, "--batch", exists=True, dir_okay=False,
                                         help='JSON lines of {"query": "..."}: one JSON line out per query, in order'),
    as_json: bool = typer.Option(False, "--json", help="JSON lines on standard output, nothing else."),
) -> None:
    """Search a user's memories, best first: keywords and meaning fused, with neighbouring turns."""
    _quiet_logs()
    if (query is None) == (batch is None):
        error_line("give a QUERY or --batch FILE (not both)", 2)
    queries: list[str] = []
    if batch is not None:
        for number, raw in enumerate(batch.read_text(encoding="utf-8").splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                text = line["query"]
                assert isinstance(text, str) and text.strip()
            except (ValueError, KeyError, TypeError, AssertionError):
                error_line(f"{batch}: line {number} is not a JSON object with a non-empty \"query\"")
            queries.append(text)
    else:
        assert query is not None
        if not query.strip():
            error_line("the query is empty", 2)
        queries = [query]
    store = open_store()
    user = store.user(email)
    memory = _service(store)
    asyncio.run(memory.keyring.prepare(user.id))
    memory.index_sync(user.id)
    vectors = memory.embedder.embed(queries).vectors if queries else []
    for text, vector in zip(queries, vectors):
        hits = memory.search_sync(user.id, text, vector, limit)
        if as_json or batch is not None:
            sys.stdout.write(json.dumps({"results": [result_json(h) for h in hits]}, ensure_ascii=False) + "\n")
            continue
        table = Table(title=f"{escape(text)}")
        for column in ("score", "when", "text"):
            table.add_column(column)
        table.add_column("sources", overflow="fold")  # ids whole on any width: folded, never cut
        table.add_column("id", no_wrap=True)  # what `memory forget` takes: the text wraps instead
        for h in hits:
            body = result_json(h)
            table.add_row(f"{h.score:.4f}", (body["created_at"] or "")[:10], escape(body["text"]),
                          ", ".join(body["source_ids"]), body["id"])
        out.print(table if hits else "nothing found")


@memory_app.command("list")
def memory_list(email: str, as_json: bool = typer.Option(False, "--json", help="One JSON line per memory.")) -> None:
    """A user's memories, newest first, with their sources and status."""
    from switchboard.api.memories import memory_json

    store = open_store()
    user = store.user(email)
    memory = _service(store)
    found = asyncio.run(memory.page(user.id, limit=1_000_000))
    if as_json:
        for m in found:
            sys.stdout.write(json.dumps(memory_json(m), ensure_ascii=False) + "\n")
        return
    table = Table(title=f"memories of {escape(user.email)} ({len(found)})")
    table.add_column("id", no_wrap=True)  # what `memory forget` takes: never cut, the text wraps instead
    for column in ("kind", "status", "when", "text"):
        table.add_column(column)
    table.add_column("sources", overflow="fold")  # folded onto more lines, never cut
    for m in found:
        body = memory_json(m)
        table.add_row(m.uid, m.kind, m.status, (body["created_at"] or "")[:16], escape(m.text[:200]),
                      ", ".join(m.source_ids))
    out.print(table if found else f"no memories for {escape(user.email)}")


@memory_app.command("forget")
def memory_forget(
    email: str,
    memory_id: Optional[str] = typer.Argument(None, help="The memory's id (mem_...)"),
    forget_all: bool = typer.Option(False, "--all", help="Forget every memory of the user."),
) -> None:
    """Forget one memory (and the versions it replaced) or all of them, for good."""
    from switchboard.core.errors import SwitchboardError

    if (memory_id is None) == (not forget_all):
        error_line("give a memory ID or --all (not both)", 2)
    store = open_store()
    user = store.user(email)
    memory = _service(store)
    try:
        removed = asyncio.run(memory.forget_all(user.id) if forget_all else memory.forget(user.id, memory_id or ""))
    except SwitchboardError as exc:
        fail(exc)
    out.print(f"forgot {removed} memor{'y' if removed == 1 else 'ies'} of {escape(user.email)}")
