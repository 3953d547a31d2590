"""A fake Stripe API on a real port, and webhook events signed exactly as Stripe signs them.

Speaks Stripe's REST wire format for what Switchboard calls: form-encoded POST bodies with
bracketed keys (`line_items[0][price_data][currency]=usd`), Bearer secret key, JSON objects
back, errors as {"error": {"type", "message", "code", "param"}}. Subscriptions are retrieved
(GET /v1/subscriptions/{id}) and updated (POST) as Stripe does: unknown ids are 404, an item's
`price_data` takes a `product` id (not `product_data`), metadata merges.

    with FakeStripe() as fake:
        settings.stripe.api_base = fake.url
        ... fake.sessions[-1]["metadata"]["user_id"] ...
        fake.subscriptions[sub_id] = subscription(...)   # as if Checkout had created it
    body, header = signed_event(secret, event_dict)   # Stripe-Signature: t=...,v1=...
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import time
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.servers import ServerThread

_ids = itertools.count(1)


def new_id(prefix: str) -> str:
    return f"{prefix}_test{next(_ids):06d}"


def parse_form(body: bytes) -> dict[str, Any]:
    """Stripe's form encoding back into nested dicts and lists."""
    root: dict[str, Any] = {}
    for key, value in parse_qsl(body.decode(), keep_blank_values=True):
        parts = key.replace("]", "").split("[")
        node: Any = root
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            nxt = None if last else parts[i + 1]
            if isinstance(node, list):
                idx = int(part)
                while len(node) <= idx:
                    node.append(None)
                if last:
                    node[idx] = value
                else:
                    if node[idx] is None:
                        node[idx] = [] if nxt.isdigit() else {}
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    node = node.setdefault(part, [] if nxt.isdigit() else {})
    return root


class FakeStripe:
    def __init__(self, api_key: str = "sk_test_fake") -> None:
        self.api_key = api_key
        self.sessions: list[dict[str, Any]] = []
        self.subscriptions: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.fail_next: int | None = None  # an HTTP status for the next request
        self.fail_method: str | None = None  # ... only for the next request with this method
        self.decline_payments = False  # invoices created by updates are not paid
        self._pending: dict[str, dict[str, Any]] = {}  # subscriptions as pending updates would leave them
        app = Starlette(routes=[
            Route("/v1/checkout/sessions", self._create_session, methods=["POST"]),
            Route("/v1/subscriptions/{sid}", self._subscription, methods=["GET", "POST"]),
        ])
        self._server = ServerThread(app)
        self.url = self._server.url

    def __enter__(self) -> "FakeStripe":
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(*exc)

    async def _auth(self, request: Request) -> tuple[dict[str, Any] | None, JSONResponse | None]:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return None, JSONResponse({"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}, 401)
        if self.fail_next and self.fail_method in (None, request.method):
            status, self.fail_next, self.fail_method = self.fail_next, None, None
            return None, JSONResponse({"error": {"type": "api_error", "message": "fake failure"}}, status)
        if request.method == "GET":
            form = dict(request.query_params)
        else:
            assert request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded")
            form = parse_form(await request.body())
        self.requests.append((request.method, request.url.path, form))
        return form, None

    async def _create_session(self, request: Request) -> JSONResponse:
        form, error = await self._auth(request)
        if error:
            return error
        assert form is not None
        sid = new_id("cs")
        session = {
            "id": sid, "object": "checkout.session", "mode": form["mode"], "status": "open", "payment_status": "unpaid",
            "url": f"https://checkout.stripe.test/c/pay/{sid}", "metadata": form.get("metadata", {}),
            "client_reference_id": form.get("client_reference_id"), "customer": form.get("customer"),
            "customer_email": form.get("customer_email"), "success_url": form["success_url"],
            "cancel_url": form["cancel_url"], "line_items": form["line_items"],
            "subscription_data": form.get("subscription_data"), "payment_intent_data": form.get("payment_intent_data"),
            "created": int(time.time()), "livemode": False,
        }
        self.sessions.append(session)
        return JSONResponse(session)

    async def _subscription(self, request: Request) -> JSONResponse:
        form, error = await self._auth(request)
        if error:
            return error
        assert form is not None
        sid = request.path_params["sid"]
        sub = self.subscriptions.get(sid)
        if sub is None:
            return _error(404, f"No such subscription: '{sid}'", "resource_missing", "id")
        if request.method == "POST":
            return self._update(sub, form)
        return JSONResponse(sub)

    def _update(self, sub: dict[str, Any], form: dict[str, Any]) -> JSONResponse:
        pending = form.get("payment_behavior") == "pending_if_incomplete"
        unsupported = sorted(set(form) - PENDING_UPDATE_PARAMS) if pending else []
        if unsupported:
            return _error(400, f"When `payment_behavior` is `pending_if_incomplete`, `{unsupported[0]}` cannot be "
                               "updated.", "parameter_invalid", unsupported[0])
        declined = form.get("proration_behavior") == "always_invoice" and self.decline_payments
        target = copy.deepcopy(sub) if declined and pending else sub
        problem = _update_items(target, form.get("items") or [])
        if problem:
            return _error(400, *problem)
        for key, value in (form.get("metadata") or {}).items():  # merged; "" removes a key
            if value == "":
                target["metadata"].pop(key, None)
            else:
                target["metadata"][key] = value
        if "cancel_at_period_end" in form:
            target["cancel_at_period_end"] = form["cancel_at_period_end"] == "true"
        if declined and pending:  # nothing applied until the invoice is paid (`pay_pending`)
            self._pending[sub["id"]] = target
            sub["pending_update"] = {"subscription_items": target["items"]["data"], "metadata": target["metadata"],
                                     "expires_at": int(time.time()) + 23 * 3600, "billing_cycle_anchor": None,
                                     "trial_end": None, "trial_from_plan": None}
        elif declined:
            sub["status"] = "past_due"  # payment_behavior allow_incomplete (the default)
        return JSONResponse(sub)

    def pay_pending(self, sid: str) -> dict[str, Any]:
        """The customer pays the open invoice of a pending update: Stripe applies it."""
        sub = self._pending.pop(sid)
        sub["pending_update"] = None
        self.subscriptions[sid] = sub
        return sub


# What an update with payment_behavior=pending_if_incomplete may carry (metadata since 2026-05-27.dahlia).
PENDING_UPDATE_PARAMS = {"expand", "payment_behavior", "proration_behavior", "proration_date", "billing_cycle_anchor",
                         "items", "trial_end", "trial_from_plan", "add_invoice_items", "metadata"}
PRICE_DATA_FIELDS = {"currency", "product", "recurring", "tax_behavior", "unit_amount", "unit_amount_decimal"}


def _error(status: int, message: str, code: str, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"type": "invalid_request_error", "message": message, "code": code, "param": param}},
                        status)


def _update_items(sub: dict[str, Any], items: list[Any]) -> tuple[str, str, str] | None:
    """Apply `items[n][...]` to the subscription as Stripe does; (message, code, param) if refused."""
    existing = sub["items"]["data"]
    for n, change in enumerate(items):
        param = f"items[{n}]"
        if "id" in change:
            item = next((i for i in existing if i["id"] == change["id"]), None)
            if item is None:
                return f"No such subscription item: '{change['id']}'", "resource_missing", f"{param}[id]"
        else:
            item = {"id": new_id("si"), "object": "subscription_item", "subscription": sub["id"], "quantity": 1}
            existing.append(item)
        if "price_data" in change:
            data = change["price_data"]
            unknown = sorted(set(data) - PRICE_DATA_FIELDS)
            if unknown:
                return f"Received unknown parameter: {param}[price_data][{unknown[0]}]", "parameter_unknown", \
                    f"{param}[price_data][{unknown[0]}]"
            for field in ("currency", "product", "unit_amount"):
                if field not in data:
                    return f"Missing required param: {param}[price_data][{field}].", "parameter_missing", \
                        f"{param}[price_data][{field}]"
            if "interval" not in (data.get("recurring") or {}):
                return f"Missing required param: {param}[price_data][recurring].", "parameter_missing", \
                    f"{param}[price_data][recurring]"
            item["price"] = {
                "id": new_id("price"), "object": "price", "active": False, "product": data["product"],
                "currency": data["currency"], "unit_amount": int(data["unit_amount"]), "lookup_key": None, "metadata": {},
                "recurring": {"interval": data["recurring"]["interval"], "interval_count": 1}, "type": "recurring",
            }
        elif "price" in change:
            item["price"] = {"id": change["price"], "object": "price", "active": True, "product": new_id("prod"),
                             "lookup_key": None, "metadata": {}, "type": "recurring"}
    return None


def sign(secret: str, payload: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(type_: str, obj: dict[str, Any], *, event_id: str | None = None, created: int | None = None) -> dict[str, Any]:
    return {
        "id": event_id or new_id("evt"), "object": "event", "api_version": "2025-03-31.basil",
        "created": int(time.time()) if created is None else created, "type": type_, "livemode": False,
        "pending_webhooks": 1, "request": {"id": None, "idempotency_key": None}, "data": {"object": obj},
    }


def signed_event(secret: str, evt: dict[str, Any]) -> tuple[bytes, str]:
    payload = json.dumps(evt, separators=(",", ":"))
    return payload.encode(), sign(secret, payload)


# -- Stripe objects, as the events carry them ---------------------------------------------------
def pack_session(user_id: int, pack: str, *, session_id: str | None = None, payment_intent: str | None = None,
                 paid: bool = True) -> dict[str, Any]:
    return {
        "id": session_id or new_id("cs"), "object": "checkout.session", "mode": "payment",
        "payment_status": "paid" if paid else "unpaid", "status": "complete",
        "payment_intent": payment_intent or new_id("pi"), "customer": None, "subscription": None,
        "client_reference_id": str(user_id), "metadata": {"user_id": str(user_id), "kind": "pack", "pack": pack},
        "amount_total": 1000, "currency": "usd",
    }


def plan_session(user_id: int, plan: str, customer: str, subscription: str) -> dict[str, Any]:
    return {
        "id": new_id("cs"), "object": "checkout.session", "mode": "subscription", "payment_status": "paid",
        "status": "complete", "payment_intent": None, "customer": customer, "subscription": subscription,
        "client_reference_id": str(user_id), "metadata": {"user_id": str(user_id), "kind": "plan", "plan": plan},
    }


def invoice(user_id: int, plan: str, customer: str, subscription: str, start_s: int, end_s: int, *,
            billing_reason: str = "subscription_cycle", invoice_id: str | None = None,
            payment_intent: str | None = None, metadata: bool = True) -> dict[str, Any]:
    """An invoice in the 2025 ("basil") shape: subscription under `parent`. Without `metadata`
    it names no user (as for a subscription created outside Switchboard's Checkout)."""
    md = {"user_id": str(user_id), "kind": "plan", "plan": plan} if metadata else {}
    return {
        "id": invoice_id or new_id("in"), "object": "invoice", "customer": customer, "billing_reason": billing_reason,
        "status": "paid", "amount_paid": 1499,
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": subscription, "metadata": md}},
        "lines": {"object": "list", "data": [{
            "id": new_id("il"), "object": "line_item", "amount": 1499, "metadata": md,
            "period": {"start": start_s, "end": end_s},
            "parent": {"type": "subscription_item_details",
                       "subscription_item_details": {"subscription": subscription, "proration": False}},
            "pricing": {"price_details": {"price": new_id("price"), "product": new_id("prod")}},
        }]},
        "payments": {"object": "list", "data": [{"payment": {"type": "payment_intent",
                                                             "payment_intent": payment_intent or new_id("pi")}}]},
    }


def subscription(user_id: int, plan: str, customer: str, sub_id: str, *, status: str = "active",
                 cancel_at_period_end: bool = False, start_s: int = 0, end_s: int = 0,
                 product: str | None = None) -> dict[str, Any]:
    return {
        "id": sub_id, "object": "subscription", "customer": customer, "status": status,
        "cancel_at_period_end": cancel_at_period_end, "metadata": {"user_id": str(user_id), "kind": "plan", "plan": plan},
        "pending_update": None,
        "items": {"object": "list", "data": [{
            "id": new_id("si"), "object": "subscription_item", "subscription": sub_id, "quantity": 1,
            "current_period_start": start_s, "current_period_end": end_s,
            "price": {"id": new_id("price"), "object": "price", "active": True, "product": product or new_id("prod"),
                      "currency": "usd", "recurring": {"interval": "month", "interval_count": 1}, "type": "recurring",
                      "lookup_key": plan, "metadata": {"plan": plan}},
        }]},
    }


def charge(payment_intent: str, amount: int, refunded: int, *, invoice_id: str | None = None,
           charge_id: str | None = None) -> dict[str, Any]:
    return {
        "id": charge_id or new_id("ch"), "object": "charge", "amount": amount, "amount_refunded": refunded,
        "refunded": refunded >= amount, "payment_intent": payment_intent, "invoice": invoice_id, "currency": "usd",
    }
