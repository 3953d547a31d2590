"""What our Usage must be for a FakeGemini behaviour.

Gemini counts cached tokens inside promptTokenCount (cachedContentTokenCount is a part of
it) and thinking beside the answer (thoughtsTokenCount apart from candidatesTokenCount); both
are billed, thinking as output. The fake sends candidates = completion - reasoning.
"""

from __future__ import annotations

from switchboard.core.types import Usage
from tests.fakes.openai_upstream import Behaviour
from tests.vendors.cases import completion_of


def gemini_usage(b: Behaviour) -> Usage:
    return Usage(
        prompt_tokens=b.prompt_tokens,
        completion_tokens=completion_of(b),
        cached_prompt_tokens=b.cached_tokens,
        reasoning_tokens=b.reasoning_tokens,
    )
