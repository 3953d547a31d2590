"""What goes out to Stripe: Checkout Sessions for plans and packs, and subscription updates
(cancel at the period end, plan changes: billing.plan_changes), through the `stripe` library's
StripeClient, its API base configurable so tests run a fake that speaks Stripe's wire format.
Secrets are read from the environment at use. What comes back (webhooks): billing.payments.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import stripe

from switchboard.core.config import PackConfig, PlanConfig, Settings, StripeConfig
from switchboard.core.errors import InvalidRequest, SwitchboardError

log = logging.getLogger(__name__)


def stripe_id(value: Any) -> str | None:
    """An id, whether the field is expanded (an object) or not."""
    if isinstance(value, dict):
        return value.get("id")
    return value if isinstance(value, str) else None


class PaymentsNotConfigured(SwitchboardError):
    status = 503
    type = "server_error"
    code = "payments_not_configured"


class PaymentProviderError(SwitchboardError):
    status = 502
    type = "server_error"
    code = "payment_provider_error"


# -- outbound: Checkout --------------------------------------------------------------------------
class StripeGateway:
    def __init__(self, config: StripeConfig) -> None:
        self.config = config

    def _client(self) -> stripe.StripeClient:
        key = self.config.api_key()
        if not key:
            raise PaymentsNotConfigured(f"payments are not configured: set {self.config.api_key_env}")
        base = {"api": self.config.api_base.rstrip("/")} if self.config.api_base else None
        return stripe.StripeClient(key, base_addresses=base, max_network_retries=2)  # type: ignore[arg-type]

    def checkout(
        self, settings: Settings, user_id: int, email: str, *, plan: str | None = None, pack: str | None = None,
        customer_id: str | None = None,
    ) -> dict[str, str]:
        """A Checkout Session for a plan (mode=subscription) or a pack (mode=payment): {id, url}."""
        params = checkout_params(settings, user_id, email, plan=plan, pack=pack, customer_id=customer_id)
        with _stripe_call("checkout"):
            session = self._client().v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        return {"id": session["id"], "url": session["url"]}

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        with _stripe_call("subscription lookup"):
            return self._client().v1.subscriptions.retrieve(subscription_id).to_dict()

    def update_subscription(self, subscription_id: str, params: dict[str, Any]) -> dict[str, Any]:
        with _stripe_call("change"):
            return self._client().v1.subscriptions.update(subscription_id, params=params).to_dict()  # type: ignore[arg-type]

    def cancel_at_period_end(self, subscription_id: str, flag: bool = True) -> dict[str, Any]:
        return self.update_subscription(subscription_id, {"cancel_at_period_end": flag})

    def change_plan(
        self, settings: Settings, user_id: int, subscription_id: str, plan: str, *, upgrade: bool, resume: bool,
    ) -> dict[str, Any]:
        """Move the subscription's item to `plan`'s price (`plan_change_params`); returns the
        updated subscription as Stripe reports it (with `pending_update` set if an upgrade's
        payment failed). `resume` first withdraws a pending cancellation, in an update of its
        own: an update that waits for its payment takes only item and proration parameters."""
        if resume:
            self.cancel_at_period_end(subscription_id, False)
        current = self.subscription(subscription_id)
        return self.update_subscription(subscription_id, plan_change_params(settings, user_id, current, plan, upgrade=upgrade))


@contextmanager
def _stripe_call(what: str) -> Iterator[None]:
    """Any Stripe failure (refusal, outage, network) becomes a 502 naming what failed; the
    library has already retried what is safe to retry."""
    try:
        yield
    except stripe.StripeError as exc:
        log.warning("stripe %s failed: %s", what, type(exc).__name__)
        if isinstance(exc, stripe.APIConnectionError):
            raise PaymentProviderError(f"Stripe could not be reached for the {what}") from None
        raise PaymentProviderError(f"Stripe refused the {what}: {exc.user_message or type(exc).__name__}") from None


def requested_plan(settings: Settings, plan: str) -> PlanConfig:
    """A plan a client asked for by name; an unknown name is the client's error (400)."""
    config = settings.plans.get(plan)
    if config is None:
        raise InvalidRequest(f"unknown plan {plan!r}; known: {', '.join(sorted(settings.plans))}", param="plan")
    return config


def requested_pack(settings: Settings, pack: str) -> PackConfig:
    """A pack asked for by name; an unknown name is the client's error (400)."""
    config = settings.packs.get(pack)
    if config is None:
        raise InvalidRequest(f"unknown pack {pack!r}; known: {', '.join(settings.packs)}", param="pack")
    return config


def checkout_params(
    settings: Settings, user_id: int, email: str, *, plan: str | None = None, pack: str | None = None,
    customer_id: str | None = None,
) -> dict[str, Any]:
    if (plan is None) == (pack is None):
        raise InvalidRequest("give either 'plan' or 'pack'")
    cfg = settings.stripe
    metadata = {"user_id": str(user_id)}
    params: dict[str, Any] = {
        "success_url": cfg.success_url, "cancel_url": cfg.cancel_url, "client_reference_id": str(user_id),
    }
    if customer_id:
        params["customer"] = customer_id
    else:
        params["customer_email"] = email
    if plan is not None:
        config = requested_plan(settings, plan)
        if config.monthly_usd <= 0:
            raise InvalidRequest(f"plan {plan!r} is free: nothing to buy", param="plan")
        metadata.update(kind="plan", plan=plan)
        item: dict[str, Any] = {"quantity": 1, **_plan_price(settings, plan)}
        params.update(mode="subscription", line_items=[item], subscription_data={"metadata": dict(metadata)})
    else:
        assert pack is not None
        pconfig = requested_pack(settings, pack)
        metadata.update(kind="pack", pack=pack)
        price = cfg.pack_price_ids.get(pack)
        item = {"quantity": 1}
        if price:
            item["price"] = price
        else:
            item["price_data"] = {
                "currency": cfg.currency, "unit_amount": _cents(pconfig.usd),
                "product_data": {"name": f"Switchboard {pconfig.credits:,} credits", "metadata": {"pack": pack}},
            }
        params.update(mode="payment", line_items=[item], payment_intent_data={"metadata": dict(metadata)})
    params["metadata"] = metadata
    return params


def _plan_price(settings: Settings, plan: str, *, product: str | None = None) -> dict[str, Any]:
    """How a line or subscription item names a plan's price: the configured price id, else the
    price inline. Inline, Checkout creates the product from `product_data`, while a subscription
    item's `price_data` only takes an existing product id (`product`)."""
    price = settings.stripe.plan_price_ids.get(plan)
    if price:
        return {"price": price}
    data: dict[str, Any] = {
        "currency": settings.stripe.currency, "unit_amount": _cents(settings.plan(plan).monthly_usd),
        "recurring": {"interval": "month"},
    }
    if product:
        data["product"] = product
    else:
        data["product_data"] = {"name": f"Switchboard {plan}", "metadata": {"plan": plan}}
    return {"price_data": data}


def plan_change_params(
    settings: Settings, user_id: int, current: dict[str, Any], plan: str, *, upgrade: bool,
) -> dict[str, Any]:
    """The update that moves a Stripe subscription (`current`, as retrieved) to `plan`: its item
    gets the plan's price (inline prices stay on the item's product). The metadata names the
    plan, which is how the webhooks recognise an inline price.

    An upgrade is prorated and invoiced at once, as its credit is granted at once, and only if
    that invoice is paid (`pending_if_incomplete`: otherwise Stripe keeps the change in
    `pending_update` and applies it, with a customer.subscription.updated event, once paid;
    metadata in a pending update needs API version 2026-05-27.dahlia or later, which the
    library pins). A downgrade is not prorated: it takes effect at the next period."""
    items = (current.get("items") or {}).get("data") or []
    if len(items) != 1 or not items[0].get("id"):
        raise PaymentProviderError(f"the Stripe subscription has {len(items)} items; expected exactly one")
    item = items[0]
    price = item.get("price")
    product = stripe_id(price.get("product")) if isinstance(price, dict) else None
    if not settings.stripe.plan_price_ids.get(plan) and not product:
        raise PaymentProviderError("the Stripe subscription item has no product to attach the new price to")
    params: dict[str, Any] = {
        "items": [{"id": item["id"], **_plan_price(settings, plan, product=product)}],
        "proration_behavior": "always_invoice" if upgrade else "none",
        "metadata": {"user_id": str(user_id), "kind": "plan", "plan": plan},
    }
    if upgrade:
        params["payment_behavior"] = "pending_if_incomplete"
    return params


def _cents(usd: Any) -> int:
    return int((usd * 100).to_integral_value())


def price_list(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Plans and packs with their prices, for `switchboard plans` and the docs."""
    return {
        "plans": [{"name": p.name, "monthly_usd": str(p.monthly_usd), "monthly_credits": p.monthly_credits,
                   "sandbox": p.sandbox, "rollover": p.rollover} for p in settings.plans.values()],
        "packs": [{"name": p.name, "credits": p.credits, "usd": str(p.usd),
                   "expires_after_days": settings.topup_expiry_days} for p in settings.packs.values()],
    }
