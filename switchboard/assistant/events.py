"""What a turn tells whoever carries it to the user (the API's server-sent events, a channel,
the terminal), in order: text as it is written, each tool call's start and end, then exactly
one of `TurnCompleted` or `TurnFailed`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union

from switchboard.assistant.conversations import Message
from switchboard.core.money import format_credits, ucr_to_credits_float


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ToolStarted:
    call_id: str
    name: str
    arguments: str


@dataclass(slots=True)
class ToolFinished:
    call_id: str
    name: str
    outcome: str  # ok | error | refused
    credits_ucr: int


@dataclass(slots=True)
class Totals:
    """What the turn cost, as the user sees it."""

    charged_ucr: int = 0
    remaining_ucr: int | None = None
    models: list[str] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)

    def json(self) -> dict[str, Any]:
        return {
            "credits_charged": ucr_to_credits_float(self.charged_ucr),
            "credits_charged_exact": format_credits(self.charged_ucr),
            "credits_remaining": None if self.remaining_ucr is None else ucr_to_credits_float(self.remaining_ucr),
            "models": self.models,
        }


@dataclass(slots=True)
class TurnCompleted:
    message: Message  # the reply, as stored
    totals: Totals
    stopped: str | None = None  # why the turn stopped early (a limit), if it did
    conversation_id: str | None = None  # another conversation the reply leads to (/new)


@dataclass(slots=True)
class TurnFailed:
    """The turn could not finish; what was said and charged is kept, `message` says what happened."""

    message: Message | None
    error: str
    code: str
    status: int
    totals: Totals


TurnEvent = Union[TextDelta, ToolStarted, ToolFinished, TurnCompleted, TurnFailed]
