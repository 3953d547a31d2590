"""Bearer API keys -> the calling user."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from switchboard.accounts.keys import KeyCache, Principal, hash_key, plausible_key
from switchboard.api.access_log import current
from switchboard.core.errors import AuthenticationFailed


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise AuthenticationFailed(
            "You didn't provide an API key. Send it in the Authorization header: 'Authorization: Bearer YOUR_KEY'."
        )
    token = parse_bearer(header)
    if token is None:
        raise AuthenticationFailed("Malformed Authorization header; expected 'Bearer YOUR_KEY'.")
    return token


def parse_bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header; None when it is not of that form."""
    scheme, _, token = header.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def principal_for(keys: KeyCache, key: str) -> Principal | None:
    """The key's user: from the in-process cache, else looked up on the cache's own threads.

    A failure is cheap: a key of the wrong shape is never looked up, an unknown one is looked
    up once (then remembered), and a client address that has failed too often lately is
    answered 429 for any key not already known (`FailureLimiter`), before any lookup."""
    info = current()
    digest = hash_key(key) if plausible_key(key) else None  # once: the cache and the lookup take it
    hit, principal = keys.cached(digest) if digest is not None else (False, None)
    if principal is None:
        limiter, client = (info.auth_failures, info.client) if info is not None else (None, "")
        if limiter is not None:
            limiter.check(client)
        if digest is not None and not hit:
            principal = await asyncio.get_running_loop().run_in_executor(keys.executor, keys.get, digest)
        if principal is None:
            if limiter is not None:
                limiter.failed(client)
            return None
    if info is not None:
        info.user_id = principal.user_id
    keys.note_use(principal.api_key_id)
    return principal


async def authenticate(request: Request, keys: KeyCache) -> Principal:
    token = bearer_token(request)
    principal = await principal_for(keys, token)
    if principal is None:
        # Never echo the key back: a prefix is enough to recognise it.
        raise AuthenticationFailed(f"Incorrect API key provided: {token[:6]}****.")
    return principal
