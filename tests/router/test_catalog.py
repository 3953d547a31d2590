"""The shipped vendor catalog: complete, priced, dated, and joined only when a key is set."""

from __future__ import annotations

from collections import Counter

import pytest

from switchboard.core.config import Settings
from switchboard.router.catalog import VENDOR_KEY_ENV, build_catalog, effective_providers, shipped_models


def test_every_vendor_has_flagship_mid_and_small_with_dated_sourced_prices() -> None:
    models = shipped_models()
    per_vendor = Counter(m.vendor for m in models)
    assert set(per_vendor) == set(VENDOR_KEY_ENV) and min(per_vendor.values()) >= 3
    for vendor in VENDOR_KEY_ENV:
        assert {m.tier for m in models if m.vendor == vendor} >= {"flagship", "mid", "small"}
    for m in models:
        assert m.price_date[:4] == "2026" and m.price_source.startswith("http"), m.spec.name
        assert m.spec.input_usd_per_mtok > 0 and m.spec.output_usd_per_mtok >= m.spec.input_usd_per_mtok / 10
        if m.spec.cached_input_usd_per_mtok is not None:
            assert m.spec.cached_input_usd_per_mtok <= m.spec.input_usd_per_mtok
        assert m.spec.abilities is not None and m.spec.abilities <= {"tools", "vision", "json", "reasoning"}


def test_vendor_models_join_when_the_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for names in VENDOR_KEY_ENV.values():
        for name in names:
            monkeypatch.delenv(name, raising=False)
    settings = Settings(local_model={"enabled": False}, models=[
        {"name": "mine", "provider": "openai", "context_window": 10, "input_usd_per_mtok": 1, "output_usd_per_mtok": 1}])
    assert effective_providers(settings) == []
    monkeypatch.setenv("ANTHROPIC_API_KEY", "k")
    providers = effective_providers(settings)
    assert [(p.name, p.kind, p.api_key_env) for p in providers] == [("anthropic", "anthropic", "ANTHROPIC_API_KEY")]
    catalog = build_catalog(settings, providers)
    claude = [s for s in catalog.values() if s.provider == "anthropic"]
    assert len(claude) >= 3 and all(s.cache_write_usd_per_mtok is not None for s in claude)
    assert not any(s.name.startswith("gpt") for s in catalog.values() if s.name != "mine")
    assert repr(providers[0]).count("k'") == 0  # the key itself is never on the config


def test_operator_models_override_shipped_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    shipped = next(m for m in shipped_models() if m.vendor == "openai")
    settings = Settings(local_model={"enabled": False}, models=[
        {"name": shipped.spec.name, "provider": "openai", "context_window": 1000, "input_usd_per_mtok": 9,
         "output_usd_per_mtok": 9}])
    assert build_catalog(settings)[shipped.spec.name].context_window == 1000
    assert build_catalog(Settings(local_model={"enabled": False}, shipped_catalog=False)) == {}
