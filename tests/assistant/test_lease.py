"""The per-conversation lease (assistant.lease) on its own: one holder at a time across
processes (two lease objects stand for two processes), and a renewal that fails once does not
end the turn or let the lease lapse."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from switchboard.assistant.lease import ConversationBusy, ConversationLeases
from switchboard.store.assistant_schema import conversations
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
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


def _busy_until(engine: Engine) -> int | None:
    with engine.connect() as conn:
        return conn.execute(select(conversations.c.busy_until_ms)).scalar_one()


def test_two_holders_take_turns_and_a_waiter_gives_up_with_409(conv_engine: Engine) -> None:
    first, second = ConversationLeases(conv_engine, lease_s=5), ConversationLeases(conv_engine, lease_s=5, wait_s=0.3)
    order: list[str] = []

    async def main() -> None:
        async with first.hold("conv_1"):
            order.append("first in")
            with pytest.raises(ConversationBusy):
                async with second.hold("conv_1"):
                    order.append("second in too early")
            order.append("first out")
        async with second.hold("conv_1"):
            order.append("second in")

    asyncio.run(main())
    assert order == ["first in", "first out", "second in"]
    assert _busy_until(conv_engine) is None  # released


def test_a_renewal_that_fails_once_is_tried_again_and_the_turn_goes_on(conv_engine: Engine) -> None:
    leases = ConversationLeases(conv_engine, lease_s=1.5)
    claim = leases._claim
    calls = []

    def flaky(conv_id: str) -> bool:
        calls.append(time.monotonic())
        if len(calls) == 2:  # the first renewal
            raise RuntimeError("database hiccup")
        return claim(conv_id)

    leases._claim = flaky  # type: ignore[method-assign]
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
