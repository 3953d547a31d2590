"""Query parameters, parsed strictly and described once.

Each parameter is an object that both parses a request's value (anything out of shape is a 400
naming the parameter, never a 500) and describes itself for the OpenAPI schema, so that what is
published and what is enforced cannot drift apart. Numbers are ASCII digits only: `int()` also
takes "١٢", "1_000" and " 12 ", and `datetime` overflows on a 20-digit year.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from switchboard.core.errors import InvalidRequest, NotFound

_DIGITS = re.compile(r"[0-9]{1,19}")
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")


@dataclass(frozen=True, slots=True)
class IntQuery:
    """An integer in [lo, hi]; absent or empty means `default`."""

    name: str
    default: int | None
    lo: int
    hi: int
    description: str

    def parse(self, request: Request) -> int | None:
        raw = request.query_params.get(self.name)
        if raw is None or raw == "":
            return self.default
        if _DIGITS.fullmatch(raw) is None:
            raise InvalidRequest(f"'{self.name}' must be an integer between {self.lo} and {self.hi}", param=self.name)
        value = int(raw)
        if not self.lo <= value <= self.hi:
            raise InvalidRequest(f"'{self.name}' must be between {self.lo} and {self.hi}", param=self.name)
        return value

    def openapi(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "integer", "minimum": self.lo, "maximum": self.hi}
        if self.default is not None:
            schema["default"] = self.default
        return _parameter(self.name, self.description, schema)


@dataclass(frozen=True, slots=True)
class ChoiceQuery:
    """One of a few fixed values; the first is the default."""

    name: str
    choices: tuple[str, ...]
    description: str

    def parse(self, request: Request) -> str:
        value = request.query_params.get(self.name) or self.choices[0]
        if value not in self.choices:
            allowed = ", ".join(f"'{c}'" for c in self.choices)
            raise InvalidRequest(f"'{self.name}' must be one of {allowed}", param=self.name)
        return value

    def openapi(self) -> dict[str, Any]:
        return _parameter(self.name, self.description, {"type": "string", "enum": list(self.choices), "default": self.choices[0]})


@dataclass(frozen=True, slots=True)
class MonthQuery:
    """A calendar month, YYYY-MM (years 1970 to 9998, so that the month after is a valid date
    too); absent means None (the caller's default)."""

    name: str
    description: str

    def parse(self, request: Request) -> str | None:
        raw = request.query_params.get(self.name)
        if raw is None or raw == "":
            return None
        match = _MONTH.fullmatch(raw)
        if match is None or not (1970 <= int(match[1]) <= 9998 and 1 <= int(match[2]) <= 12):
            raise InvalidRequest(f"'{self.name}' must be a month as YYYY-MM (1970-01 to 9998-12)", param=self.name)
        return raw

    def openapi(self) -> dict[str, Any]:
        return _parameter(self.name, self.description, {"type": "string", "pattern": r"^[0-9]{4}-[0-9]{2}$"})


@dataclass(frozen=True, slots=True)
class TextQuery:
    """A string the handler reads itself, up to `max_length` (WhatsApp's hub.* handshake)."""

    name: str
    description: str
    max_length: int = 1000

    def parse(self, request: Request) -> str | None:
        raw = request.query_params.get(self.name)
        if raw is not None and len(raw) > self.max_length:
            raise InvalidRequest(f"'{self.name}' is longer than {self.max_length} characters", param=self.name)
        return raw

    def openapi(self) -> dict[str, Any]:
        return _parameter(self.name, self.description, {"type": "string", "maxLength": self.max_length})


def _parameter(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_ID = re.compile(r"[a-z]{2,5}_[0-9a-f]{1,64}")


@dataclass(frozen=True, slots=True)
class IdQuery:
    """An object id used as a cursor (`after=msg_...`); absent means None."""

    name: str
    prefix: str
    description: str

    def parse(self, request: Request) -> str | None:
        raw = request.query_params.get(self.name)
        if raw is None or raw == "":
            return None
        if _ID.fullmatch(raw) is None or not raw.startswith(self.prefix + "_"):
            raise InvalidRequest(f"'{self.name}' must be an id of the form {self.prefix}_...", param=self.name)
        return raw

    def openapi(self) -> dict[str, Any]:
        return _parameter(self.name, self.description, {"type": "string", "pattern": rf"^{self.prefix}_[0-9a-f]+$"})


@dataclass(frozen=True, slots=True)
class PathId:
    """An object's id in the path (`/v1/conversations/{conversation_id}`). One that cannot exist
    is "not found", exactly like one that belongs to someone else."""

    name: str
    prefix: str
    description: str
    digits: bool = False  # ids like rem_12 (a row number) rather than random hex

    def parse(self, request: Request) -> str:
        raw = request.path_params.get(self.name, "")
        shape = re.fullmatch(rf"{self.prefix}_[0-9]{{1,18}}", raw) if self.digits else _ID.fullmatch(raw)
        if shape is None or not raw.startswith(self.prefix + "_"):
            raise NotFound(f"No {self.description} found with id '{raw[:80]}'.", param=self.name)
        return raw

    def openapi(self) -> dict[str, Any]:
        pattern = rf"^{self.prefix}_[0-9]+$" if self.digits else rf"^{self.prefix}_[0-9a-f]+$"
        return {"name": self.name, "in": "path", "required": True, "description": f"The {self.description}'s id",
                "schema": {"type": "string", "pattern": pattern}}
