"""The shape of Stripe's webhook events, validated at the edge (pydantic) before anything is
stored or granted.

A signed event is authentic but can still be unusable: an id that is a list or too long for
its column, a `created` that is not a whole number or overflows a BIGINT, a metadata user id
of 30 digits or in another script's digits ("١" passes `str.isdigit()` and `int()` reads it as
1). Such values must never reach the database (they answered 500 there and rolled back the
event's record, so Stripe retried them forever) nor pick a user. Here each is either accepted
in the form the handlers use (ids as plain strings, expanded objects reduced to their id,
integers within range) or refused with a reason, and the event is then parked
(billing.payments).

Only the fields the handlers read are modelled; others are ignored.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, ValidationError

# Both databases' ids are signed 64-bit integers (PostgreSQL BIGINT, SQLite INTEGER).
MAX_DB_ID = 2**63 - 1
# Stripe's ids are letters, digits and underscores ("cs_test_a1B2..." is the longest kind, ~66
# characters); 100 is what every column holding one allows.
MAX_ID_LENGTH = 100
_ID = re.compile(rf"[A-Za-z0-9_]{{1,{MAX_ID_LENGTH}}}")
_USER_ID = re.compile(r"[0-9]{1,19}")  # ASCII digits only: `re`'s [0-9] is not `str.isdigit()`
MAX_SECONDS = 253_402_300_799  # 9999-12-31T23:59:59Z: far beyond any real timestamp, within BIGINT in ms
MAX_AMOUNT = 10**12  # in the currency's smallest unit; Stripe's own limit is 8 digits


def _expanded_id(value: Any) -> Any:
    """An id field may hold the expanded object instead: take its id."""
    return value.get("id") if isinstance(value, dict) else value


StripeId = Annotated[str, StringConstraints(pattern=_ID.pattern.join("^$"))]
Ref = Annotated[StripeId, BeforeValidator(_expanded_id)]
Seconds = Annotated[int, Field(strict=True, ge=0, le=MAX_SECONDS)]
Amount = Annotated[int, Field(strict=True, ge=0, le=MAX_AMOUNT)]
Text = Annotated[str, StringConstraints(max_length=500)]  # Stripe caps metadata values at 500
_OR_EMPTY = BeforeValidator(lambda v: {} if v is None else v)  # null: empty (metadata, a list object)
Metadata = Annotated[dict[str, Text], _OR_EMPTY]


class _Obj(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class StripeObject(_Obj):
    """An event's `data.object`, as one type of event carries it."""

    def ids(self) -> Iterator[str | None]:
        """The Stripe ids it mentions: what events waiting for one of them may need."""
        return iter(())


def user_id_of(text: object) -> int | None:
    """A user id written as text (metadata, client_reference_id): ASCII digits, within the
    database's id range; anything else is no user id."""
    if not isinstance(text, str) or not _USER_ID.fullmatch(text):
        return None
    value = int(text)
    return value if 0 < value <= MAX_DB_ID else None


# -- the envelope ---------------------------------------------------------------------------------
class _Data(_Obj):
    object: dict[str, Any]


class _Envelope(_Obj):
    id: StripeId
    type: Annotated[str, StringConstraints(pattern=r"^[a-z0-9_.]{1,100}$")]
    created: Seconds | None = None
    data: _Data


@dataclass(frozen=True, slots=True)
class Envelope:
    """What is recorded of every signed event, even an unusable one: `event_id` is Stripe's id,
    or for an event whose id cannot be stored a digest of the whole event (so that its
    redelivery is still a duplicate); `problem` says why it cannot be handled, if so."""

    event_id: str
    type: str
    created_ms: int | None
    problem: str | None = None


def envelope(event: dict[str, Any]) -> Envelope:
    """The event's record; never raises."""
    try:
        e = _Envelope.model_validate(event)
    except ValidationError as exc:
        evt_id, kind = event.get("id"), event.get("type")
        if not (isinstance(evt_id, str) and _ID.fullmatch(evt_id)):
            evt_id = "sha256_" + hashlib.sha256(json.dumps(event, sort_keys=True).encode()).hexdigest()
        return Envelope(evt_id, kind[:100] if isinstance(kind, str) and kind else "unknown", None,
                        "malformed event: " + describe(exc))
    return Envelope(e.id, e.type, e.created * 1000 if e.created is not None else None)


def describe(exc: ValidationError) -> str:
    """A validation error in one line, naming each field (never echoing its value)."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'event'}: {err['msg']}" for err in exc.errors()[:5])


# -- the objects ------------------------------------------------------------------------------------
class CheckoutSession(StripeObject):
    id: StripeId
    mode: str | None = None
    payment_status: str | None = None
    client_reference_id: Text | None = None
    metadata: Metadata = {}
    payment_intent: Ref | None = None
    customer: Ref | None = None
    subscription: Ref | None = None

    def ids(self) -> Iterator[str | None]:
        yield from (self.id, self.payment_intent, self.customer, self.subscription)


class Charge(StripeObject):
    id: StripeId
    amount: Amount = 0
    amount_refunded: Amount = 0
    payment_intent: Ref | None = None
    invoice: Ref | None = None  # before API version 2025-03-31 only

    def ids(self) -> Iterator[str | None]:
        yield from (self.payment_intent, self.invoice, self.id)


class Price(_Obj):
    id: StripeId | None = None
    lookup_key: Text | None = None
    metadata: Metadata = {}


class _PriceDetails(_Obj):
    price: Ref | None = None


class _Pricing(_Obj):
    price_details: _PriceDetails | None = None


class _ItemDetails(_Obj):
    proration: bool | None = None


class _LineParent(_Obj):
    subscription_item_details: _ItemDetails | None = None


class Period(_Obj):
    start: Seconds
    end: Seconds


class PricedItem(_Obj):
    """An invoice line or a subscription item: what names the plan paid for."""

    metadata: Metadata = {}
    price: Price | StripeId | None = None
    pricing: _Pricing | None = None  # invoice lines since 2025-03-31: the price id is here

    @property
    def price_ids(self) -> list[str]:
        found = [self.price.id if isinstance(self.price, Price) else self.price,
                 self.pricing.price_details.price if self.pricing and self.pricing.price_details else None]
        return [p for p in found if p]


class InvoiceLine(PricedItem):
    period: Period | None = None
    proration: bool | None = None
    parent: _LineParent | None = None

    @property
    def is_proration(self) -> bool:
        details = self.parent.subscription_item_details if self.parent else None
        return bool(self.proration or (details is not None and details.proration))


class _Lines(_Obj):
    data: list[InvoiceLine] = []


class SubscriptionDetails(_Obj):
    subscription: Ref | None = None
    metadata: Metadata = {}


class _InvoiceParent(_Obj):
    subscription_details: SubscriptionDetails | None = None


class _Payment(_Obj):
    payment_intent: Ref | None = None


class _InvoicePayment(_Obj):
    payment: _Payment | None = None


class _Payments(_Obj):
    data: list[_InvoicePayment] = []


class Invoice(StripeObject):
    id: StripeId
    customer: Ref | None = None
    billing_reason: str | None = None
    amount_paid: Amount | None = None
    subscription: Ref | None = None  # before 2025-03-31; since then under parent
    subscription_details: SubscriptionDetails | None = None
    parent: _InvoiceParent | None = None
    lines: Annotated[_Lines, _OR_EMPTY] = _Lines()
    payment_intent: Ref | None = None  # before 2025-03-31; since then in payments
    charge: Ref | None = None
    payments: Annotated[_Payments, _OR_EMPTY] = _Payments()

    @property
    def details(self) -> SubscriptionDetails:
        return (self.parent.subscription_details if self.parent else None) or self.subscription_details \
            or SubscriptionDetails()

    @property
    def subscription_id(self) -> str | None:
        return self.subscription or self.details.subscription

    @property
    def period_line(self) -> InvoiceLine | None:
        """The subscription line (not a proration) that carries the paid period."""
        return next((line for line in self.lines.data if not line.is_proration and line.period), None)

    def payment_refs(self) -> list[str]:
        """Every id a refund of this invoice's payment may name (charge.refunded carries some)."""
        paid = [p.payment.payment_intent for p in self.payments.data if p.payment]
        return [r for r in (self.id, self.payment_intent, self.charge, *paid) if r]

    def ids(self) -> Iterator[str | None]:
        yield from (self.customer, self.subscription_id, *self.payment_refs())


class _Items(_Obj):
    data: list[PricedItem] = []


class Subscription(StripeObject):
    id: StripeId
    customer: Ref | None = None
    status: str | None = None
    cancel_at_period_end: bool = False
    metadata: Metadata = {}
    items: Annotated[_Items, _OR_EMPTY] = _Items()

    def ids(self) -> Iterator[str | None]:
        yield from (self.id, self.customer)
