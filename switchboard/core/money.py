"""Money: integer micro-credits (ucr) everywhere; Decimal only where USD prices are multiplied.

1 credit = USD 0.005 by default (configurable), 1 credit = 1,000,000 ucr. No floats in money paths.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

UCR_PER_CREDIT = 1_000_000
DEFAULT_USD_PER_CREDIT = Decimal("0.005")
_MTOK = Decimal(1_000_000)


def credits_to_ucr(credits: int | str | Decimal) -> int:
    """Whole or fractional credits (as text or Decimal, never float) to micro-credits."""
    value = Decimal(str(credits)) * UCR_PER_CREDIT
    if value != value.to_integral_value():
        raise ValueError(f"{credits} credits is finer than one micro-credit")
    return int(value)


def usd_to_ucr(usd: Decimal, usd_per_credit: Decimal = DEFAULT_USD_PER_CREDIT) -> int:
    """A USD cost to micro-credits, rounded up to the micro-credit (DESIGN: charge rule)."""
    if usd <= 0:
        return 0
    return int((usd / usd_per_credit * UCR_PER_CREDIT).to_integral_value(rounding=ROUND_CEILING))


def per_mtok(tokens: int, usd_per_mtok: Decimal) -> Decimal:
    return Decimal(tokens) * usd_per_mtok / _MTOK


def format_credits(ucr: int) -> str:
    """Micro-credits as a credit figure with up to six decimals, trailing zeros dropped."""
    sign = "-" if ucr < 0 else ""
    whole, frac = divmod(abs(ucr), UCR_PER_CREDIT)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{frac:06d}".rstrip("0")


def ucr_to_credits_float(ucr: int) -> float:
    """For display in JSON only; never feed this back into a money path."""
    return ucr / UCR_PER_CREDIT


def credits_per_1k_tokens(usd_per_mtok: Decimal, usd_per_credit: Decimal = DEFAULT_USD_PER_CREDIT) -> Decimal:
    """A price per million tokens in USD as credits per 1,000 tokens (how users see prices)."""
    return usd_per_mtok / usd_per_credit / 1000


def usd_text(usd: Decimal) -> str:
    """An exact USD amount as plain decimal text (0.00000021, never 2.1E-7)."""
    return format(usd.normalize(), "f") if usd else "0"
