"""Errors that reach API clients, each with its HTTP status and OpenAI error type."""

from __future__ import annotations


class SwitchboardError(Exception):
    """Base class: `status`, `type` and `code` map onto OpenAI's error JSON."""

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        """HTTP headers that go with this error (Retry-After, for those that have one)."""
        return {}

    def to_openai(self) -> dict[str, object]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(SwitchboardError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(SwitchboardError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class InsufficientCredits(SwitchboardError):
    status = 402
    type = "insufficient_quota"
    code = "insufficient_credits"

    def __init__(self, available_ucr: int, needed_ucr: int) -> None:
        from switchboard.core.money import format_credits

        self.available_ucr = available_ucr
        self.needed_ucr = needed_ucr
        super().__init__(
            f"Not enough credits: available {format_credits(available_ucr)}, "
            f"this request needs up to {format_credits(needed_ucr)}."
        )


class SpendingCapReached(SwitchboardError):
    """The user's own daily or monthly spending cap would be exceeded."""

    status = 402
    type = "insufficient_quota"
    code = "spending_cap_reached"

    def __init__(self, cap: str, cap_ucr: int, spent_ucr: int, needed_ucr: int) -> None:
        from switchboard.core.money import format_credits

        super().__init__(
            f"Your {cap} spending cap of {format_credits(cap_ucr)} credits would be exceeded: "
            f"{format_credits(spent_ucr)} spent or held so far, this request needs up to {format_credits(needed_ucr)}."
        )


class CreditLimitReached(SwitchboardError):
    """A call would take more than what is left of a limit the caller set below the balance
    (an assistant turn's credit limit): nothing was held or charged."""

    status = 402
    type = "insufficient_quota"
    code = "credit_limit_reached"

    def __init__(self, limit_ucr: int, needed_ucr: int) -> None:
        from switchboard.core.money import format_credits

        self.limit_ucr = limit_ucr
        self.needed_ucr = needed_ucr
        super().__init__(
            f"This would exceed the credit limit: {format_credits(limit_ucr)} credits left of it, "
            f"the next step needs at least {format_credits(needed_ucr)}."
        )


class ModelNotFound(SwitchboardError):
    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class ContextTooLong(SwitchboardError):
    status = 413
    type = "invalid_request_error"
    code = "context_length_exceeded"


def retry_after_header(seconds: float) -> str:
    """A Retry-After value: whole seconds, rounded up, at least 1."""
    return str(max(1, int(seconds + 0.999)))


class RateLimited(SwitchboardError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"retry-after": retry_after_header(self.retry_after_s)}


class UpstreamError(SwitchboardError):
    """The provider failed (bad status, malformed reply, connection lost)."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        upstream_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.upstream_status = upstream_status
        self.retry_after_s = retry_after_s  # the upstream's Retry-After, when it sent one


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(UpstreamError):
    """Every model that could serve the request is unavailable right now (its provider's
    circuit breaker is open): an outage, not a fault of the request. Retry after `retry_after_s`."""

    status = 503
    type = "server_error"
    code = "service_unavailable"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message, retryable=False, retry_after_s=max(1.0, retry_after_s))

    def headers(self) -> dict[str, str]:
        assert self.retry_after_s is not None
        return {"retry-after": retry_after_header(self.retry_after_s)}


class NotFound(SwitchboardError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class DuplicateRequest(SwitchboardError):
    """A request id (Idempotency-Key) that was already used: it is never charged twice."""

    status = 409
    type = "invalid_request_error"
    code = "duplicate_request_id"


class IdempotencyKeyReused(SwitchboardError):
    """The Idempotency-Key was first used with a different request (body or endpoint)."""

    status = 422
    type = "invalid_request_error"
    code = "idempotency_key_reused"
