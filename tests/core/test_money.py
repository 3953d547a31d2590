from decimal import Decimal

import pytest

from switchboard.core.catalog import ModelSpec
from switchboard.core.money import credits_to_ucr, format_credits, usd_to_ucr
from switchboard.core.types import Usage


def test_usd_to_ucr_rounds_up_to_the_micro_credit() -> None:
    assert usd_to_ucr(Decimal("0.005")) == 1_000_000
    assert usd_to_ucr(Decimal("0.0000000000001")) == 1  # never free when it cost something
    assert usd_to_ucr(Decimal(0)) == 0


def test_credits_parse_exactly() -> None:
    assert credits_to_ucr("12.5") == 12_500_000
    with pytest.raises(ValueError):
        credits_to_ucr("0.0000001")
    assert format_credits(12_500_000) == "12.5" and format_credits(-3) == "-0.000003"


def test_cost_prices_cached_tokens_at_their_own_rate() -> None:
    spec = ModelSpec("m", "p", "m", 8192, Decimal("0.15"), Decimal("0.60"), cached_input_usd_per_mtok=Decimal("0.075"))
    cost = spec.cost_usd(Usage(prompt_tokens=1000, completion_tokens=100, cached_prompt_tokens=400))
    assert cost == Decimal("600") * Decimal("0.15") / 10**6 + Decimal("400") * Decimal("0.075") / 10**6 + Decimal("100") * Decimal("0.60") / 10**6
    assert spec.worst_case_usd(1000, 100) >= cost
