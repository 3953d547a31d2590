"""Bearer API keys -> the calling user."""

from __future__ import annotations

import asyncio

from starlette.requests import Request

from switchboard.accounts.keys import KeyCache, Principal, hash_key
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
    """The key's user: from the in-process cache, else looked up off the event loop."""
    digest = hash_key(key)  # once per request: the cache and the lookup both take the digest
    hit, principal = keys.cached(digest)
    if not hit:
        principal = await asyncio.to_thread(keys.get, digest)
    return principal


async def authenticate(request: Request, keys: KeyCache) -> Principal:
    token = bearer_token(request)
    principal = await principal_for(keys, token)
    if principal is None:
        # Never echo the key back: a prefix is enough to recognise it.
        raise AuthenticationFailed(f"Incorrect API key provided: {token[:6]}****.")
    return principal
