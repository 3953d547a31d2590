"""What our Usage must be for a FakeAnthropic behaviour.

The fake reports Anthropic's way: `input_tokens` excludes cache reads and writes, which come
beside it (cache_read_input_tokens, cache_creation_input_tokens); thinking is inside
output_tokens and not reported apart. Normalised, the prompt is the sum of the three.
"""

from __future__ import annotations

from switchboard.core.types import Usage
from tests.fakes.openai_upstream import Behaviour
from tests.vendors.cases import completion_of


def anthropic_usage(b: Behaviour) -> Usage:
    return Usage(
        prompt_tokens=b.prompt_tokens,
        completion_tokens=completion_of(b),
        cached_prompt_tokens=b.cached_tokens,
        cache_write_tokens=getattr(b, "cache_write_tokens", 0),
        reasoning_tokens=0,
    )
