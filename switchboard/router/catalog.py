"""The model catalog: the local model, the operator's [[models]], and the shipped vendor models.

`catalog.toml` (next to this file) lists current vendor models with list prices, context
windows and abilities, each with the date and source of its price. A vendor's models join the
catalog when the vendor is usable: a [[providers]] entry of that kind, or its API key in the
environment (then a provider named after the vendor is created with the default base URL).
Operator [[models]] entries win over shipped ones of the same name.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

from switchboard.core.catalog import ModelSpec
from switchboard.core.config import ProviderConfig, Settings

CATALOG_FILE = Path(__file__).with_name("catalog.toml")

# The environment variable each vendor's key is read from when no [[providers]] entry names it.
VENDOR_KEY_ENV: dict[str, tuple[str, ...]] = {
    "openai": ("OPENAI_API_KEY",),
    "anthropic": ("ANTHROPIC_API_KEY",),
    "gemini": ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    "xai": ("XAI_API_KEY",),
    "qwen": ("DASHSCOPE_API_KEY",),
}


@dataclass(frozen=True, slots=True)
class ShippedModel:
    spec: ModelSpec  # provider = the vendor kind; re-bound to the serving provider's name
    vendor: str
    tier: str
    price_date: str
    price_source: str
    notes: str | None


def _decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


@lru_cache(maxsize=1)
def shipped_models(path: Path = CATALOG_FILE) -> tuple[ShippedModel, ...]:
    if not path.is_file():
        return ()
    with path.open("rb") as f:
        data = tomllib.load(f)
    models = []
    for entry in data.get("models", []):
        spec = ModelSpec(
            name=entry["name"],
            provider=entry["vendor"],
            upstream_name=entry.get("upstream_name", entry["name"]),
            context_window=int(entry["context_window"]),
            input_usd_per_mtok=Decimal(str(entry["input_usd_per_mtok"])),
            output_usd_per_mtok=Decimal(str(entry["output_usd_per_mtok"])),
            cached_input_usd_per_mtok=_decimal(entry.get("cached_input_usd_per_mtok")),
            cache_write_usd_per_mtok=_decimal(entry.get("cache_write_usd_per_mtok")),
            max_output_tokens=entry.get("max_output_tokens"),
            abilities=frozenset(entry.get("abilities", [])),
        )
        models.append(ShippedModel(spec, entry["vendor"], entry.get("tier", ""), str(entry.get("price_date", "")),
                                   entry.get("price_source", ""), entry.get("notes")))
    return tuple(models)


def vendor_key_env(vendor: str) -> str | None:
    """The first of the vendor's key variables that is set."""
    return next((name for name in VENDOR_KEY_ENV.get(vendor, ()) if os.environ.get(name)), None)


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


def build_catalog(settings: Settings, providers: list[ProviderConfig] | None = None) -> dict[str, ModelSpec]:
    """Every model clients may ask for, by name."""
    providers = providers if providers is not None else effective_providers(settings)
    catalog = dict(settings.catalog)
    if not settings.shipped_catalog:
        return catalog
    serving: dict[str, str] = {}  # vendor kind -> provider name serving its shipped models
    for p in providers:
        if p.kind in VENDOR_KEY_ENV:
            if p.name == p.kind or p.kind not in serving:
                serving[p.kind] = p.name
    for shipped in shipped_models():
        provider = serving.get(shipped.vendor)
        if provider is not None and shipped.spec.name not in catalog:
            catalog[shipped.spec.name] = dataclasses.replace(shipped.spec, provider=provider)
    return catalog
