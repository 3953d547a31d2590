"""From generated pieces to the reply the client sees: stop strings, trimming, loop detection.

None of this touches llama.cpp: it works on decoded text and token ids, so it is tested on its
own and shared by every prompt format.
"""

from __future__ import annotations


def split_stop(text: str, stops: tuple[str, ...]) -> tuple[str, str, bool]:
    """Split text into (safe to emit, held back, stopped).

    Text up to the first complete stop string is emitted and the rest dropped. Otherwise the
    longest tail that could still grow into a stop string is held back, so that no part of a
    stop string ever reaches the client.
    """
    first = -1
    for stop in stops:
        at = text.find(stop)
        if at >= 0 and (first < 0 or at < first):
            first = at
    if first >= 0:
        return text[:first], "", True
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    cut = len(text) - hold
    return text[:cut], text[cut:], False


class AnswerText:
    """Turns decoded pieces into the text the client sees.

    Leading whitespace is dropped (the model answers " Paris" after "Answer:"), trailing
    whitespace is held until more text follows (and dropped at the end), and the answer ends at
    the first stop string, none of which leaks out, not even in part. `started` tells whether any
    visible text has been emitted yet: the engine keeps the model from ending a reply before then.
    """

    def __init__(self, stops: tuple[str, ...], openers: tuple[str, ...] = ()) -> None:
        self.stops = stops
        self.openers = openers  # markers that end the reply if it opens with them
        self.pending = ""
        self.started = False
        self.stopped = False

    def feed(self, piece: str) -> str:
        text = self.pending + piece
        if not self.started:
            text = text.lstrip()
            self.pending = text
            if not text:
                return ""
            # With the leading whitespace gone, a reply that opens with a new turn
            # ("\n\nQuestion: ...") no longer shows the newline the stop strings look for.
            if text.startswith(self.openers):
                self.stopped = True
                self.pending = ""
                return ""
            if any(opener.startswith(text) for opener in self.openers):
                return ""  # could still become one: hold it
        emit, held, self.stopped = split_stop(text, self.stops)
        body = emit.rstrip()
        self.pending = "" if self.stopped else emit[len(body) :] + held
        if body:
            self.started = True
        return body

    def finish(self) -> str:
        """What is left once generation ended without a stop string."""
        rest = "" if self.stopped else self.pending.rstrip()
        self.pending = ""
        if rest:
            self.started = True
        return rest


# A loop: the reply's last tokens are one unit repeated. Short units must repeat more often
# before it counts ("no, no, no" is a reply; "I am. I am. I am." is not).
_MAX_UNIT = 48
_MIN_LOOP_TOKENS = 8
_LONG_UNIT = 8


class LoopGuard:
    """Notices a reply that has started repeating itself, token for token.

    A base model this small falls into loops ("I am a student. I am a student. ..."); the
    repeat penalty makes them rarer but not impossible. A loop is the last `u` tokens repeated
    `c` times back to back, with `c >= 3` and `c * u >= 8` tokens (a phrase said a third time),
    or `c >= 2` with `u >= 8` (a sentence said again).
    """

    def __init__(self) -> None:
        self.tokens: list[int] = []

    def push(self, token: int) -> bool:
        """Record one generated token; True once the reply is looping."""
        tokens = self.tokens
        tokens.append(token)
        n = len(tokens)
        for unit in range(1, min(_MAX_UNIT, n // 2) + 1):
            if tokens[n - unit - 1] != token:  # cheap first test: the unit's last token repeats
                continue
            tail = tokens[n - unit :]
            copies = 1
            while copies * unit + unit <= n and tokens[n - (copies + 1) * unit : n - copies * unit] == tail:
                copies += 1
            if (copies >= 3 and copies * unit >= _MIN_LOOP_TOKENS) or (copies >= 2 and unit >= _LONG_UNIT):
                return True
        return False
