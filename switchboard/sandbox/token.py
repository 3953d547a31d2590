"""Gateway tokens: how code in a sandbox may call a model, and only as far as its turn allows.

A token is issued for one run of one user's turn: it names the user, the turn, a credit limit
(what the turn has left) and an expiry, signed with HMAC-SHA256 under a key this process draws
at start-up. It is also registered in this process's table of live grants, which is what
revocation (the run ended) and the spending account (the credit limit) need; the gateway socket
that accepts it belongs to the same process, so neither a database table nor a shared key is
needed. A token from another process, an altered one, an expired or a revoked one is refused.

The token reaches the sandbox only as a file readable by the sandbox's uid alone (never the
environment or a command line), and it can do nothing but call models as that user, within
that limit, until the run ends.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field

PREFIX = "sbx_"


class TokenRefused(Exception):
    """The token is not one this process issued, or no longer valid; the message says which."""


@dataclass(slots=True)
class Grant:
    """What a token allows, and what has been spent under it."""

    jti: str
    user_id: int
    plan: str
    turn_id: str
    limit_ucr: int
    expires_ms: int
    reserved: dict[str, int] = field(default_factory=dict)  # request id -> hold, while it runs
    charged: dict[str, int] = field(default_factory=dict)  # request id -> what it was charged
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def spent_ucr(self) -> int:
        """Charged, plus held for calls still running (what they may still be charged)."""
        with self._lock:
            return sum(self.charged.values()) + sum(self.reserved.values())

    @property
    def calls(self) -> int:
        with self._lock:
            return len(self.charged) + len(self.reserved)

    def left_ucr(self) -> int:
        return max(0, self.limit_ucr - self.spent_ucr)

    def reserve(self, request_id: str, hold_ucr: int) -> bool:
        """Count a call's hold against the limit, if it fits; concurrent calls cannot jointly pass it."""
        with self._lock:
            used = sum(self.charged.values()) + sum(self.reserved.values())
            if used + hold_ucr > self.limit_ucr:
                return False
            self.reserved[request_id] = hold_ucr
            return True

    def settle(self, request_id: str, charged_ucr: int) -> None:
        with self._lock:
            held = self.reserved.pop(request_id, charged_ucr)
            self.charged[request_id] = min(charged_ucr, held)

    def request_ids(self) -> list[str]:
        with self._lock:
            return [*self.charged, *self.reserved]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class GatewayTokens:
    """Issues, verifies and revokes this process's gateway tokens."""

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self._live: dict[str, Grant] = {}
        self._lock = threading.Lock()

    def _mac(self, body: str) -> str:
        return _b64(hmac.new(self._secret, body.encode(), hashlib.sha256).digest())

    def issue(self, user_id: int, plan: str, turn_id: str, limit_ucr: int, ttl_s: float) -> Grant:
        """Register a grant; `encode` gives its token."""
        grant = Grant(secrets.token_hex(16), user_id, plan, turn_id, max(0, limit_ucr),
                      int((time.time() + ttl_s) * 1000))
        with self._lock:
            self._live[grant.jti] = grant
        return grant

    def encode(self, grant: Grant) -> str:
        """The signed token of a grant: what the sandbox presents as its bearer token."""
        payload = {"jti": grant.jti, "sub": grant.user_id, "turn": grant.turn_id, "lim": grant.limit_ucr,
                   "exp": grant.expires_ms}
        body = PREFIX + _b64(json.dumps(payload, separators=(",", ":")).encode())
        return f"{body}.{self._mac(body)}"

    def verify(self, token: str) -> Grant:
        body, dot, mac = token.strip().rpartition(".")
        if not dot or not body.startswith(PREFIX) or not hmac.compare_digest(self._mac(body), mac):
            raise TokenRefused("not a valid sandbox token")
        try:
            payload = json.loads(_unb64(body[len(PREFIX):]))
        except ValueError:
            raise TokenRefused("not a valid sandbox token") from None
        if payload.get("exp", 0) < time.time() * 1000:
            raise TokenRefused("the sandbox token has expired")
        with self._lock:
            grant = self._live.get(payload.get("jti", ""))
        if grant is None:
            raise TokenRefused("the sandbox token was revoked: its run has ended")
        if grant.user_id != payload.get("sub") or grant.limit_ucr != payload.get("lim"):
            raise TokenRefused("not a valid sandbox token")
        return grant

    def revoke(self, grant: Grant) -> None:
        with self._lock:
            self._live.pop(grant.jti, None)

    def live(self) -> int:
        with self._lock:
            return len(self._live)
