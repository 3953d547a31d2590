"""Zero configuration: the embedded Gemma model behind the API, through the official SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.core.types import ChatMessage, ChatRequest
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user
from tests.support.servers import ServerThread

# The README's own prompts and other everyday ones: each asked several times, streamed and not.
EVERYDAY = ("Name three colours.", "Hello!", "What is the capital of France?", "Thank you!")
SAMPLES = 3
MARKUP = ("<start_of_", "<end_of_", "<unused", "[multimodal]")


def expected_ucr(prompt_tokens: int, completion_tokens: int) -> int:
    # 0.01 USD/Mtok in, 0.04 out; 1 credit = USD 0.005 -> micro-credits, rounded up.
    return -(-(prompt_tokens * 10_000 + completion_tokens * 40_000) // 5_000)


def test_local_model_answers_streams_and_is_metered_exactly(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"threads": 1})  # everything else: defaults
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, key = add_user(engine, settings, "local@example.com", "free")
    with ServerThread(create_app(settings)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}], temperature=0
        )
        answer = raw.parse()
        assert "Paris" in (answer.choices[0].message.content or "")
        assert raw.headers["x-switchboard-model"] == "gemma-3-270m"
        local = server.server.config.app.state.sb.runtime.providers["local"]  # type: ignore[union-attr]
        spec = settings.catalog["gemma-3-270m"]

        exact = local.count_prompt_tokens(spec, ChatRequest("auto", [ChatMessage("user", "What is the capital of France?")]))
        assert answer.usage.prompt_tokens == exact  # counted by the model's own tokenizer
        charged = answer.model_extra["switchboard"]["charged_ucr"]
        assert charged == expected_ucr(answer.usage.prompt_tokens, answer.usage.completion_tokens)

        chunks = list(client.chat.completions.create(
            model="gemma-3-270m", messages=[{"role": "user", "content": "Write one sentence about the sea."}],
            stream=True, stream_options={"include_usage": True}, max_tokens=24,
        ))
        text_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
        assert len(text_chunks) >= 3  # token by token, not one block
        assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 24
        meter = chunks[-1].model_extra["switchboard"]
        assert meter["ttft_ms"] > 0 and meter["decode_tokens_per_s"] > 0

        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model="gemma-3-270m", messages=[{"role": "user", "content": "hello " * 9000}])
        assert err.value.status_code == 413
    engine.dispose()


def test_everyday_prompts_always_get_a_clean_answer_streamed_or_not(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, local_model={"threads": 1})
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, key = add_user(engine, settings, "everyday@example.com", "free")
    with ServerThread(create_app(settings)) as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)
        for prompt in EVERYDAY:
            messages = [{"role": "user", "content": prompt}]
            for _ in range(SAMPLES):
                # As the README's SDK snippet does it: streamed, with the usage chunk at the end.
                chunks = list(client.chat.completions.create(
                    model="auto", messages=messages, max_tokens=48, stream=True, stream_options={"include_usage": True}))
                text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
                usage = chunks[-1].usage
                assert text.strip(), f"empty streamed reply to {prompt!r}"
                assert not any(m in text for m in MARKUP), text
                assert usage is not None and 1 <= usage.completion_tokens <= 48
                assert chunks[-1].model_extra["switchboard"]["charged_ucr"] == expected_ucr(
                    usage.prompt_tokens, usage.completion_tokens)

                answer = client.chat.completions.create(model="auto", messages=messages, max_tokens=48)
                content = answer.choices[0].message.content or ""
                assert content.strip(), f"empty reply to {prompt!r}"
                assert not any(m in content for m in MARKUP), content
                assert 1 <= answer.usage.completion_tokens <= 48
    engine.dispose()
