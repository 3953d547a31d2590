"""Delivering notifications from the outbox: each at most once per success, retried on failure.

The ledger writes notifications in the same transaction as the charge that caused them, so
none is lost. A dispatcher (one per process; safe with many) claims a row by stamping
`delivered_ms` only if it is still empty, then calls the notifier; if the notifier fails, the
claim is released and `attempts` goes up. Channels plug in by implementing `Notifier`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Protocol

import httpx
from sqlalchemy import Engine, select, update

from switchboard.billing.ledger import now_ms
from switchboard.store.db import read
from switchboard.store.schema import notifications, users

log = logging.getLogger(__name__)


class Notifier(Protocol):
    def deliver(self, event: dict[str, Any]) -> None:
        """Deliver one event or raise; called from a worker thread."""


class LogNotifier:
    def deliver(self, event: dict[str, Any]) -> None:
        log.warning("notification for %s: %s", event["email"], event["event"])


class WebhookNotifier:
    """POSTs each event as JSON; any non-2xx answer is a failure (retried later)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def deliver(self, event: dict[str, Any]) -> None:
        httpx.post(self.url, json=event, timeout=self.timeout_s).raise_for_status()


def deliver_pending(engine: Engine, notifier: Notifier, limit: int = 100, max_attempts: int = 10) -> int:
    """Deliver what is waiting; returns how many were delivered. Blocking."""
    delivered = 0
    # A read-only connection: on SQLite it does not take the write lock every pass.
    pending = read(engine, lambda conn: conn.execute(
        select(notifications, users.c.email)
        .join(users, users.c.id == notifications.c.user_id)
        .where(notifications.c.delivered_ms.is_(None), notifications.c.attempts < max_attempts)
        .order_by(notifications.c.id)
        .limit(limit)
    ).mappings().all())
    for row in pending:
        with engine.begin() as conn:  # claim: only one process gets it
            claimed = conn.execute(
                update(notifications)
                .where(notifications.c.id == row["id"], notifications.c.delivered_ms.is_(None))
                .values(delivered_ms=now_ms())
            ).rowcount
        if not claimed:
            continue
        event = {"id": row["id"], "user_id": row["user_id"], "email": row["email"], "kind": row["kind"],
                 **json.loads(row["payload"])}
        try:
            notifier.deliver(event)
            delivered += 1
        except Exception as exc:  # noqa: BLE001 - released for a later retry
            log.warning("notification %s not delivered (%s); will retry", row["id"], type(exc).__name__)
            with engine.begin() as conn:
                conn.execute(update(notifications).where(notifications.c.id == row["id"])
                             .values(delivered_ms=None, attempts=notifications.c.attempts + 1))
    return delivered


async def dispatch_forever(engine: Engine, notifier: Notifier, interval_s: float, max_attempts: int) -> None:
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(deliver_pending, engine, notifier, 100, max_attempts)
        except Exception:  # noqa: BLE001 - retried next interval
            log.exception("notification dispatch failed")
