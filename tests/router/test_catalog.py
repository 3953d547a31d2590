"""The shipped vendor catalog: complete, priced, dated, and joined only when a key is set."""

from __future__ import annotations

from collections import Counter
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from switchboard.core.config import Settings
from switchboard.router.catalog import VENDOR_KEY_ENV, build_catalog, effective_providers, next_price_change, shipped_models


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


def test_an_announced_price_change_applies_from_its_date(tmp_path: Path) -> None:
    """gemini-4-carbon's introductory price ends on 2026-11-30: from 2026-12-01 the catalog
    charges Google's new list price, with no release in between."""
    def carbon(on: date) -> Any:
        return next(m for m in shipped_models(on=on) if m.spec.name == "gemini-4-carbon")

    before, after = carbon(date(2026, 11, 30)), carbon(date(2026, 12, 1))
    assert (before.spec.input_usd_per_mtok, before.spec.output_usd_per_mtok) == (Decimal("2.00"), Decimal("10.00"))
    assert before.scheduled == (date(2026, 12, 1),)
    assert (after.spec.input_usd_per_mtok, after.spec.cached_input_usd_per_mtok, after.spec.output_usd_per_mtok) == (
        Decimal("4.00"), Decimal("0.20"), Decimal("20.00"))
    assert after.price_date == "2026-12-01" and after.scheduled == ()
    assert next_price_change(date(2026, 11, 27)) == date(2026, 12, 1)
    bad = tmp_path / "catalog.toml"
    bad.write_text('[[models]]\nname = "m"\nvendor = "openai"\ncontext_window = 1\ninput_usd_per_mtok = "1"\n'
                   'output_usd_per_mtok = "1"\n[[models.price_changes]]\nfrom = "2026-12-01"\n')
    with pytest.raises(ValueError, match="TOML date"):
        shipped_models(bad, date(2026, 12, 1))


def test_a_running_server_reprices_without_a_restart(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from switchboard.inference.runtime import Runtime

    monkeypatch.setenv("GEMINI_API_KEY", "k")
    settings = Settings(data_dir=tmp_path, local_model={"enabled": False})
    runtime = Runtime(settings)
    runtime.reprice(date(2026, 11, 30))
    assert runtime.catalog["gemini-4-carbon"].output_usd_per_mtok == Decimal("10.00")
    old_router = runtime.router
    runtime.reprice(date(2026, 12, 1))
    assert runtime.catalog["gemini-4-carbon"].output_usd_per_mtok == Decimal("20.00")
    assert runtime.router is not old_router and runtime.inference.router is runtime.router
    assert runtime.router.catalog["gemini-4-carbon"].input_usd_per_mtok == Decimal("4.00")
    runtime.engine.dispose()
