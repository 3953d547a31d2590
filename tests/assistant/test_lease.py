"""The per-conversation lease (assistant.lease) on its own: one holder at a time across
processes (two lease objects, each with its own writer, stand for two processes), the turn's
first write in the claim's transaction, a release that clears only its own lease, and a
renewal that fails once does not end the turn or let the lease lapse."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, select

from switchboard.assistant.lease import ConversationBusy, ConversationLeases
from switchboard.core.errors import NotFound
from switchboard.store.assistant_schema import conversations
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from switchboard.store.runner import TransactionRunner
from switchboard.store.schema import users


@pytest.fixture
def conv_engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'lease.db'}")
    upgrade(engine)
    now = int(time.time() * 1000)
    with engine.begin() as conn:
        user_id = conn.execute(users.insert().values(email="l@example.com", plan="free", created_ms=now)).inserted_primary_key[0]
        conn.execute(conversations.insert().values(id="conv_1", user_id=user_id, channel="api", created_ms=now,
                                                   updated_ms=now))
    return engine


@pytest.fixture
def writers(conv_engine: Engine) -> Iterator[list[TransactionRunner]]:
    """Two processes' writers (started; stopped, their queues drained, at the end)."""
    runners = [TransactionRunner(conv_engine), TransactionRunner(conv_engine)]
    for runner in runners:
        runner.start()
    yield runners
    for runner in runners:
        runner.stop()


def _busy_until(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(conversations.c.busy_until_ms)).scalar_one()


def test_two_holders_take_turns_and_a_waiter_gives_up_with_409(conv_engine: Engine,
                                                               writers: list[TransactionRunner]) -> None:
    first = ConversationLeases(writers[0], lease_s=5)
    second = ConversationLeases(writers[1], lease_s=5, wait_s=0.3)
    order: list[str] = []

    async def main() -> None:
        async with first.hold("conv_1", first=lambda c: "stored with the claim") as held:
            order.append(f"first in: {held.first}")
            with pytest.raises(ConversationBusy):
                async with second.hold("conv_1", first=lambda c: order.append("second's write, too early")):
                    order.append("second in too early")
            order.append("first out")
        async with second.hold("conv_1"):  # once the first's queued release is committed
            order.append("second in")

    asyncio.run(main())
    assert order == ["first in: stored with the claim", "first out", "second in"]
    writers[1].stop()
    assert _busy_until(conv_engine) is None  # released


def test_a_release_clears_only_its_own_lease(conv_engine: Engine, writers: list[TransactionRunner]) -> None:
    """The writer may re-run a release after the next turn's claim (a failed batch's units run
    after the next batch): the next turn's lease must survive it."""
    leases = ConversationLeases(writers[0], lease_s=5)
    with conv_engine.begin() as conn:
        old = leases.claim(conn, "conv_1")
    time.sleep(0.01)
    with conv_engine.begin() as conn:
        new = leases.claim(conn, "conv_1")  # the next turn of this process
        assert old is not None and new is not None and new > old
        leases.release(conn, "conv_1", old)  # the first turn's release, late
    assert _busy_until(conv_engine) == new
    with conv_engine.begin() as conn:
        leases.release(conn, "conv_1", new)
    assert _busy_until(conv_engine) is None


def test_a_renewal_that_fails_once_is_tried_again_and_the_turn_goes_on(conv_engine: Engine,
                                                                       writers: list[TransactionRunner]) -> None:
    leases = ConversationLeases(writers[0], lease_s=1.5)
    claim = leases.claim
    calls = []

    def flaky(conn: Connection, conv_id: str) -> int | None:
        calls.append(time.monotonic())
        if len(calls) == 2:  # the first renewal
            raise RuntimeError("database hiccup")
        return claim(conn, conv_id)

    leases.claim = flaky  # type: ignore[method-assign]
    seen: list[int | None] = []

    async def main() -> None:
        async with leases.hold("conv_1"):
            start = int(time.time() * 1000)
            await asyncio.sleep(1.8)  # past the first lease (1.5 s): renewed by the second renewal
            seen.append(_busy_until(conv_engine))
            seen.append(start)

    asyncio.run(main())
    assert len(calls) >= 3
    busy_until, start = seen
    assert busy_until is not None and busy_until > start + 1_500


def test_a_conversation_deleted_before_its_turn_is_not_found_at_once(conv_engine: Engine,
                                                                     writers: list[TransactionRunner]) -> None:
    """A message to a conversation deleted meanwhile fails at once with 404, rather than
    waiting for a lease nobody will ever release."""
    leases = ConversationLeases(writers[0], lease_s=5, wait_s=30)
    with conv_engine.begin() as conn:
        conn.execute(conversations.delete().where(conversations.c.id == "conv_1"))

    async def main() -> None:
        async with leases.hold("conv_1"):
            pass

    started = time.monotonic()
    with pytest.raises(NotFound):
        asyncio.run(main())
    assert time.monotonic() - started < 5
