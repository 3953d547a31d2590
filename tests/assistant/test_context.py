"""What of a conversation's history goes to the model: whole units, never a call without its result."""

from __future__ import annotations

from typing import Any

from switchboard.assistant.context import to_chat, units
from switchboard.assistant.conversations import Message


def _message(i: int, role: str, content: str | None = None, **extra: Any) -> Message:
    return Message(i, f"msg_{i}", "conv_1", role, "text", content, i, **extra)


def _roles(groups: list[list[Message]]) -> list[list[str]]:
    return [[m.role for m in group] for group in groups]


def test_a_tool_call_travels_with_its_results() -> None:
    history = [
        _message(1, "user", "what's 2+2?"),
        _message(2, "assistant", tool_calls=[{"id": "c1", "name": "calc", "arguments": "{}"}]),
        _message(3, "tool", "4", tool_call_id="c1", name="calc"),
        _message(4, "assistant", "4"),
    ]
    assert _roles(units(history)) == [["user"], ["assistant", "tool"], ["assistant"]]


def test_a_call_whose_turn_was_interrupted_is_left_out() -> None:
    """A process killed between storing a tool call and its result leaves the call unanswered;
    the turn that runs the message again must not send it (vendors answer 400 to such a call)."""
    history = [
        _message(1, "user", "look it up"),
        _message(2, "assistant", tool_calls=[{"id": "c1", "name": "search", "arguments": "{}"},
                                             {"id": "c2", "name": "search", "arguments": "{}"}]),
        _message(3, "tool", "found", tool_call_id="c1", name="search"),  # c2 never answered
        _message(4, "user", "and?"),
    ]
    groups = units(history)
    assert _roles(groups) == [["user"], ["user"]]
    sent = [to_chat(m) for group in groups for m in group]
    assert all(not m.tool_calls for m in sent)


def test_an_unanswered_call_at_the_end_is_left_out_too() -> None:
    history = [_message(1, "user", "hi"),
               _message(2, "assistant", tool_calls=[{"id": "c9", "name": "f", "arguments": "{}"}])]
    assert _roles(units(history)) == [["user"]]


def test_a_result_without_its_call_is_left_out() -> None:
    history = [_message(1, "tool", "orphan", tool_call_id="gone"), _message(2, "user", "hello")]
    assert _roles(units(history)) == [["user"]]
