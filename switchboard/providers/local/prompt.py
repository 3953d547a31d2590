"""How a conversation becomes the text a small local model continues.

A prompt is a fixed prefix (the same for every request: `<bos>` and, for some formats, a short
preamble of examples) followed by the conversation. The prefix's KV state is computed once and
shared by every sequence; the conversation is tokenized per request. Each part is a list of
`Segment`s: plain text is tokenized as text (a user who types `<start_of_turn>` gets those
characters, not the control token), a format's own markers (ChatML's `<|im_start|>`) as special
tokens.

Which format suits which model was measured, not guessed: see `bench/local_model_eval.py` and
docs/local-model.md for the question set and the scores of every format.
"""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.core.types import ChatMessage


@dataclass(frozen=True, slots=True)
class Segment:
    text: str
    special: bool = False  # tokenize control-token markup in it (a format's own markers only)


def _message_text(message: ChatMessage) -> str:
    text = message.text().strip()
    if message.role == "assistant" and message.tool_calls:
        calls = "; ".join(f"{c.name}({c.arguments})" for c in message.tool_calls)
        text = f"{text} [called {calls}]".strip()
    return text


def _system_text(messages: list[ChatMessage]) -> str:
    return "\n".join(t for m in messages if m.role == "system" and (t := m.text().strip()))


@dataclass(frozen=True)
class TranscriptFormat:
    """A plain-text transcript for a base model: labelled lines, ending with the reply's label.

    The model marks the end of its answer by starting a new turn or by leaving a blank line, so
    those are the stop strings; `openers` are the same turn labels at the very start of a reply,
    where no newline precedes them.
    """

    name: str
    user: str
    assistant: str
    tool: str
    preamble: str = ""  # fixed text after <bos>: part of the shared, cached prefix
    blank_line_stops: bool = True

    @property
    def stops(self) -> tuple[str, ...]:
        turns = tuple(f"\n{label}:" for label in (self.user, self.assistant, self.tool))
        return turns + (("\n\n",) if self.blank_line_stops else ())

    @property
    def openers(self) -> tuple[str, ...]:
        return tuple(f"{label}:" for label in (self.user, self.assistant, self.tool))

    def prefix(self) -> list[Segment]:
        return [Segment(self.preamble)] if self.preamble else []

    def conversation(self, messages: list[ChatMessage]) -> list[Segment]:
        labels = {"user": self.user, "assistant": self.assistant, "tool": self.tool}
        parts: list[str] = []
        if system := _system_text(messages):
            parts.append(system + "\n\n")
        for message in messages:
            if message.role != "system":
                parts.append(f"{labels.get(message.role, self.user)}: {_message_text(message)}\n")
        parts.append(f"{self.assistant}:")
        return [Segment("".join(parts))]


@dataclass(frozen=True)
class TurnFormat:
    """A chat template with control tokens, for instruction-tuned models (ChatML, Gemma's turns).

    `system_role` None: the model has no system turn, and system text opens the first user turn
    (as Gemma's own template does).
    """

    name: str
    open: str  # before the role name, e.g. "<|im_start|>"
    close: str  # after a turn's text, e.g. "<|im_end|>\n"
    user_role: str
    assistant_role: str
    system_role: str | None
    tool_role: str

    stops: tuple[str, ...] = ()
    openers: tuple[str, ...] = ()

    def prefix(self) -> list[Segment]:
        return []

    def conversation(self, messages: list[ChatMessage]) -> list[Segment]:
        segments: list[Segment] = []
        system = _system_text(messages)
        if system and self.system_role is not None:
            segments += [Segment(f"{self.open}{self.system_role}\n", True), Segment(system), Segment(self.close, True)]
            system = ""
        roles = {"user": self.user_role, "assistant": self.assistant_role, "tool": self.tool_role}
        for message in messages:
            if message.role == "system":
                continue
            text = _message_text(message)
            if system and message.role == "user":
                text, system = f"{system}\n\n{text}", ""
            role = roles.get(message.role, self.user_role)
            segments += [Segment(f"{self.open}{role}\n", True), Segment(text), Segment(self.close, True)]
        segments.append(Segment(f"{self.open}{self.assistant_role}\n", True))
        return segments


PromptFormat = TranscriptFormat | TurnFormat

# A few worked examples ahead of the conversation: they show the base model short answers, a
# list, counting, a greeting and a follow-up that uses what was said earlier.
_EXAMPLES = (
    "Question: What is the capital of Egypt?\nAnswer: The capital of Egypt is Cairo.\n\n"
    "Question: Name two animals.\nAnswer: A cat and a dog.\n\n"
    "Question: Count to five.\nAnswer: 1, 2, 3, 4, 5.\n\n"
    "Question: Hi!\nAnswer: Hello! How can I help you?\n\n"
    "Question: I have a sister called Mia.\nAnswer: That is nice.\n"
    "Question: What is my sister called?\nAnswer: Your sister is called Mia.\n\n"
)

FORMATS: dict[str, PromptFormat] = {
    f.name: f
    for f in (
        TranscriptFormat("qa", user="Question", assistant="Answer", tool="Tool result"),
        TranscriptFormat("qa-examples", user="Question", assistant="Answer", tool="Tool result", preamble=_EXAMPLES),
        TranscriptFormat(
            "user-assistant", user="User", assistant="Assistant", tool="Tool",
            preamble="A conversation between a user and a helpful assistant.\n\n",
        ),
        TurnFormat("gemma-turns", "<start_of_turn>", "<end_of_turn>\n", "user", "model", None, "user"),
        TurnFormat("chatml", "<|im_start|>", "<|im_end|>\n", "user", "assistant", "system", "tool"),
    )
}


def render(fmt: PromptFormat, messages: list[ChatMessage]) -> str:
    """The whole prompt as text (prefix and conversation), for logs, docs and tests."""
    return "".join(s.text for s in fmt.prefix() + fmt.conversation(messages))
