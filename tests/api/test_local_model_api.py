"""Zero configuration: the embedded Gemma model behind the API, through the official SDK."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from switchboard.api.app import create_app
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user
from tests.support.servers import ServerThread


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
        from switchboard.core.types import ChatMessage, ChatRequest

        exact = local.count_prompt_tokens(spec, ChatRequest("auto", [ChatMessage("user", "What is the capital of France?")]))
        assert answer.usage.prompt_tokens == exact  # counted by the model's own tokenizer
        # 0.01 USD/Mtok in, 0.04 out; 1 credit = USD 0.005 -> micro-credits, rounded up.
        expected_ucr = -(-(answer.usage.prompt_tokens * 10_000 + answer.usage.completion_tokens * 40_000) // 5_000)
        assert answer.model_extra["switchboard"]["charged_ucr"] == expected_ucr

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
