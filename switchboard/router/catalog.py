"""The model catalog: the local model, the operator's [[models]], and the shipped vendor models.

`catalog.toml` (next to this file) lists current vendor models with list prices, context
windows and abilities, each with the date and source of its price. A vendor's models join the
catalog when the vendor is usable: a [[providers]] entry of that kind, or its API key in the
environment (then a provider named after the vendor is created with the default base URL).
Operator [[models]] entries win over shipped ones of the same name.

A vendor's announced price change is an entry's `[[models.price_changes]]`: from its date
(00:00 UTC) the catalog carries the new price, and a running server re-prices itself then
(inference.runtime), so charges follow the vendor's list without a restart or a release.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import VENDOR_KEY_ENV, ProviderConfig, Settings

CATALOG_FILE = Path(__file__).with_name("catalog.toml")


_PRICE_FIELDS = ("input_usd_per_mtok", "output_usd_per_mtok", "cached_input_usd_per_mtok", "cache_write_usd_per_mtok")


@dataclass(frozen=True, slots=True)
class ShippedModel:
    spec: ModelSpec  # provider = the vendor kind; re-bound to the serving provider's name
    vendor: str
    tier: str
    price_date: str
    price_source: str
    notes: str | None
    scheduled: tuple[date, ...] = ()  # dates of announced price changes not yet in force


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def today_utc() -> date:
    return datetime.now(timezone.utc).date()


def shipped_models(path: Path = CATALOG_FILE, on: date | None = None) -> tuple[ShippedModel, ...]:
    """The shipped models with the prices in force on `on` (default: today, UTC)."""
    return _shipped_models(path, on or today_utc())


@lru_cache(maxsize=4)
def _shipped_models(path: Path, on: date) -> tuple[ShippedModel, ...]:
    if not path.is_file():
        return ()
    with path.open("rb") as f:
        data = tomllib.load(f)
    models = []
    for entry in data.get("models", []):
        prices = {name: _decimal(entry.get(name)) for name in _PRICE_FIELDS}
        price_date, scheduled = str(entry.get("price_date", "")), []
        changes = entry.get("price_changes", [])
        if any(not isinstance(c.get("from"), date) for c in changes):
            raise ValueError(f"{path}: a price change of {entry['name']} needs `from` as a TOML date (2026-12-01)")
        for change in sorted(changes, key=lambda c: c["from"]):
            if change["from"] > on:
                scheduled.append(change["from"])
                continue
            prices.update({name: _decimal(change[name]) for name in _PRICE_FIELDS if name in change})
            price_date = change["from"].isoformat()
        spec = ModelSpec(
            name=entry["name"],
            provider=entry["vendor"],
            upstream_name=entry.get("upstream_name", entry["name"]),
            context_window=int(entry["context_window"]),
            input_usd_per_mtok=prices["input_usd_per_mtok"],  # type: ignore[arg-type]
            output_usd_per_mtok=prices["output_usd_per_mtok"],  # type: ignore[arg-type]
            cached_input_usd_per_mtok=prices["cached_input_usd_per_mtok"],
            cache_write_usd_per_mtok=prices["cache_write_usd_per_mtok"],
            max_output_tokens=entry.get("max_output_tokens"),
            abilities=frozenset(entry.get("abilities", [])),
        )
        models.append(ShippedModel(spec, entry["vendor"], entry.get("tier", ""), price_date,
                                   entry.get("price_source", ""), entry.get("notes"), tuple(scheduled)))
    return tuple(models)


def next_price_change(on: date | None = None) -> date | None:
    """The first date after `on` on which a shipped price changes."""
    return min((d for m in shipped_models(on=on) for d in m.scheduled), default=None)


def vendor_key_env(vendor: str) -> str | None:
    """The first of the vendor's key variables that is set."""
    return next((name for name in VENDOR_KEY_ENV.get(vendor, ()) if os.environ.get(name)), None)


VENDOR_NAMES = {"openai": "OpenAI", "anthropic": "Anthropic", "gemini": "Google Gemini", "xai": "xAI",
                "qwen": "Alibaba Qwen"}


def missing_vendor_key(model: str) -> tuple[str, str] | None:
    """(vendor, the variable its key is read from) when `model` is a shipped model of a vendor
    whose API key is not set: why a model of the shipped catalog is not offered here."""
    for shipped in shipped_models():
        envs = VENDOR_KEY_ENV.get(shipped.vendor)
        if shipped.spec.name == model and envs and vendor_key_env(shipped.vendor) is None:
            return VENDOR_NAMES.get(shipped.vendor, shipped.vendor), envs[0]
    return None


def effective_providers(settings: Settings) -> list[ProviderConfig]:
    """The configured providers, plus one per vendor whose API key is in the environment."""
    providers = list(settings.providers)
    if not settings.shipped_catalog:
        return providers
    taken = {p.name for p in providers}
    kinds = {p.kind for p in providers}
    for vendor in VENDOR_KEY_ENV:
        env = vendor_key_env(vendor)
        if env and vendor not in taken and vendor not in kinds:
            providers.append(ProviderConfig(name=vendor, kind=vendor, api_key_env=env))  # type: ignore[arg-type]
    return providers


def with_shipped(settings: Settings, catalog: dict[str, ModelSpec]) -> dict[str, ModelSpec]:
    """`catalog` plus every shipped model it lacks (vendor keys or not), when the shipped
    catalog is on: what offline views (`switchboard models`, `route`) show."""
    if not settings.shipped_catalog:
        return catalog
    return {**catalog, **{m.spec.name: m.spec for m in shipped_models() if m.spec.name not in catalog}}


def build_catalog(
    settings: Settings, providers: list[ProviderConfig] | None = None, on: date | None = None,
) -> dict[str, ModelSpec]:
    """Every model clients may ask for, by name, priced as on `on` (default: today, UTC)."""
    providers = providers if providers is not None else effective_providers(settings)
    catalog = dict(settings.catalog)
    if not settings.shipped_catalog:
        return catalog
    serving: dict[str, str] = {}  # vendor kind -> provider name serving its shipped models
    for p in providers:
        if p.kind in VENDOR_KEY_ENV:
            if p.name == p.kind or p.kind not in serving:
                serving[p.kind] = p.name
    for shipped in shipped_models(on=on):
        provider = serving.get(shipped.vendor)
        if provider is not None and shipped.spec.name not in catalog:
            catalog[shipped.spec.name] = dataclasses.replace(shipped.spec, provider=provider)
    return catalog
