"""Everything one process needs to serve metered requests, built from the settings.

Shared by the HTTP server and the CLI (`switchboard chat` runs the very same metered path).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import date, datetime, time, timezone

from sqlalchemy import Engine

from switchboard.billing.ledger import Ledger
from switchboard.billing.notify import LogNotifier, Notifier, WebhookNotifier, dispatch_forever
from switchboard.core.config import Settings
from switchboard.inference.heartbeat import Heartbeat
from switchboard.inference.metered import Inference
from switchboard.inference.resilience import RetryPolicy
from switchboard.inference.sweeper import sweep_forever, sweep_once
from switchboard.providers.base import Provider
from switchboard.providers.registry import build_providers
from switchboard.router.catalog import build_catalog, effective_providers, next_price_change
from switchboard.router.router import Router
from switchboard.store.db import make_engine
from switchboard.store.runner import TransactionRunner

log = logging.getLogger(__name__)


def make_ledger(settings: Settings) -> Ledger:
    return Ledger(
        {name: settings.plan_allowance_ucr(name) for name in settings.plans},
        hold_timeout_ms=settings.hold_timeout_s * 1000,
    )


class Runtime:
    def __init__(self, settings: Settings, engine: Engine | None = None) -> None:
        self.settings = settings
        self.engine = engine or make_engine(settings.resolved_database_url)
        self.runner = TransactionRunner(self.engine, writers=settings.ledger_writers,
                                        relay=None if settings.ledger_relay else False)
        self.ledger = make_ledger(settings)
        self._provider_configs = provider_configs = effective_providers(settings)
        self.providers: dict[str, Provider] = build_providers(settings, provider_configs)
        self.catalog = build_catalog(settings, provider_configs)
        missing = {spec.provider for spec in self.catalog.values()} - set(self.providers)
        if missing:
            raise ValueError(
                f"models name provider(s) {', '.join(sorted(missing))}, which are neither configured "
                f"nor have an API key in the environment"
            )
        self.router = Router.for_settings(self.catalog, settings)
        self.inference = Inference(
            router=self.router, providers=self.providers, ledger=self.ledger, runner=self.runner,
            usd_per_credit=settings.usd_per_credit, default_max_output_tokens=settings.default_max_output_tokens,
            retry_policy=RetryPolicy(
                attempts_per_model=settings.resilience.attempts_per_model,
                backoff_base_s=settings.resilience.backoff_base_s,
                backoff_max_s=settings.resilience.backoff_max_s,
                max_retry_after_s=settings.resilience.max_retry_after_s,
            ),
            breaker_failures=settings.resilience.breaker_failures,
            breaker_cooldown_s=settings.resilience.breaker_cooldown_s,
            breaker_min_users=settings.resilience.breaker_min_users,
            breaker_window_s=settings.resilience.breaker_window_s,
        )
        self.heartbeat = Heartbeat(
            engine=self.engine, runner=self.runner, ledger=self.ledger, catalog=self.catalog, inference=self.inference,
            usd_per_credit=settings.usd_per_credit, interval_s=settings.heartbeat_interval_s,
            lapse_s=settings.heartbeat_lapse_s, progress_interval_s=settings.progress_interval_s,
            host=settings.process_host,
        )
        self._sweeper: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._repricer: asyncio.Task[None] | None = None
        cfg = settings.notifications
        self.notifier: Notifier = WebhookNotifier(cfg.webhook_url) if cfg.webhook_url else LogNotifier()

    async def start(self, *, sweep: bool = True) -> None:
        """`sweep`: also resolve what other processes left (the server; not `switchboard chat`)."""
        self.runner.start()
        # Registered before anything else, so that holds left by a killed predecessor on this
        # host are resolved now, not after the providers' start (a model to load).
        await self.heartbeat.start(resolving=sweep)
        for provider in self.providers.values():
            await provider.start()
        if sweep:
            usd_per_credit = self.settings.usd_per_credit
            await asyncio.to_thread(sweep_once, self.runner, self.ledger, self.catalog, usd_per_credit)
            self._sweeper = asyncio.create_task(
                sweep_forever(self.runner, self.ledger, self.catalog, usd_per_credit, self.settings.sweep_interval_s)
            )
            cfg = self.settings.notifications
            self._dispatcher = asyncio.create_task(
                dispatch_forever(self.engine, self.notifier, cfg.interval_s, cfg.max_attempts)
            )
            self._repricer = asyncio.create_task(self._reprice_when_due())

    def reprice(self, on: date | None = None) -> None:
        """Prices as on `on` (default: today, UTC), after a vendor's scheduled price change.
        The catalog is updated in place, so whoever holds it (the sweeper) sees the new specs;
        the router, which ranks models by price once, is rebuilt. A request already admitted
        keeps the spec it was admitted with: its hold was sized with that price."""
        self.catalog.update(build_catalog(self.settings, self._provider_configs, on))
        self.router = self.inference.router = Router.for_settings(self.catalog, self.settings)

    async def _reprice_when_due(self) -> None:
        """Sleep until the next scheduled price change (00:00 UTC of its day), re-price, repeat."""
        while (change := next_price_change()) is not None:
            due = datetime.combine(change, time(), tzinfo=timezone.utc)
            await asyncio.sleep(max(0.0, (due - datetime.now(timezone.utc)).total_seconds()))
            if datetime.now(timezone.utc) < due:  # woke a little early: sleep the rest
                continue
            self.reprice(change)
            log.info("prices of %s in force: re-priced the catalog", change.isoformat())

    async def stop(self) -> None:
        await self.heartbeat.stop()
        for task in (self._sweeper, self._dispatcher, self._repricer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for provider in self.providers.values():
            await provider.aclose()
        await asyncio.to_thread(self.runner.stop)
        log.info("%s", self.runner.summary())
        await self.heartbeat.deregister()  # after the writer settled everything it could
        self.engine.dispose()
