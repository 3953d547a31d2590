"""The tool registry: what the model may call, who may call it, and what a call costs.

A tool is one small module that builds a `Tool`: a name, a description and a JSON schema for
its arguments (OpenAI's tools format), an async handler, the plans that may use it, and a
price. The turn offers the model the tools of the user's plan, runs the calls it makes, and
charges each through the ledger like a model call (see assistant.turn). Later parts (memory,
the sandbox) add their tools to the same registry.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from switchboard.core.types import ToolSpec

if TYPE_CHECKING:
    from switchboard.assistant.services import AssistantServices


class ToolFailed(Exception):
    """A tool could not do what was asked; the message goes back to the model (and the user).
    `units`: the work it used anyway (a sandbox run killed at its limit), charged as such."""

    def __init__(self, message: str, *, units: int | None = None) -> None:
        super().__init__(message)
        self.units = units


@dataclass(slots=True)
class ToolContext:
    """What a tool call may know and use: whose turn it is, in which conversation, and when."""

    user_id: int
    plan: str
    name: str | None
    time_zone: str
    conversation_id: str
    now: datetime
    services: AssistantServices
    # What the tool may spend of the turn's credit limit on work of its own (a sandbox's model
    # calls), beyond its own hold; None: nothing. And the turn it belongs to.
    credits_left_ucr: int | None = None
    turn_id: str | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What a handler returns: text for the model, and the units of work it used (for pricing)."""

    content: str
    units: int = 0
    # Charges the tool's work made as requests of their own, already settled (a sandbox run's
    # model calls): the turn counts them in its totals and against its limit.
    settled_ucr: int = 0
    settled_request_ids: tuple[str, ...] = ()


Handler = Callable[[ToolContext, dict[str, Any]], Awaitable[ToolResult]]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    handler: Handler
    plans: frozenset[str] | None = None  # None: every plan
    ucr_per_call: int = 0
    ucr_per_unit: int = 0
    max_units: int = 0  # the most units one call may use (its hold covers them)

    def spec(self) -> ToolSpec:
        return ToolSpec(self.name, self.description, self.parameters)

    def price_ucr(self, units: int) -> int:
        return self.ucr_per_call + self.ucr_per_unit * max(0, units)

    def allowed(self, plan: str) -> bool:
        return self.plans is None or plan in self.plans


@dataclass(slots=True)
class ToolRegistry:
    tools: dict[str, Tool] = field(default_factory=dict)

    def add(self, *tools: Tool) -> None:
        for tool in tools:
            if tool.name in self.tools:
                raise ValueError(f"tool {tool.name!r} is registered twice")
            self.tools[tool.name] = tool

    def for_plan(self, plan: str) -> list[Tool]:
        return [tool for tool in self.tools.values() if tool.allowed(plan)]

    def get(self, name: str, plan: str) -> Tool | None:
        tool = self.tools.get(name)
        return tool if tool is not None and tool.allowed(plan) else None


def parse_arguments(text: str) -> dict[str, Any]:
    """The arguments a model wrote, as a dict; a clear ToolFailed for anything else."""
    try:
        value = json.loads(text or "{}")
    except ValueError as exc:
        raise ToolFailed(f"the arguments are not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ToolFailed("the arguments must be a JSON object")
    return value


def required_str(arguments: dict[str, Any], name: str) -> str:
    value = arguments.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ToolFailed(f"`{name}` is required and must be a non-empty string")
    return value.strip()


def object_schema(properties: dict[str, Any], required: Iterable[str] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}
