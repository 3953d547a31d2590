"""History longer than the model's window: the newest fits, the rest is summarised (and charged)."""

from __future__ import annotations

import pytest

from tests.api.conftest import INPUT_USD, OUTPUT_USD, Gateway, usage_records
from tests.assistant.conftest import new_conversation, say
from tests.fakes.openai_upstream import Behaviour

SMALL_WINDOW = {"models": [{
    "name": "fake-small", "provider": "fake", "upstream_name": "fake-model", "context_window": 1500,
    "input_usd_per_mtok": INPUT_USD, "output_usd_per_mtok": OUTPUT_USD, "max_output_tokens": 100,
}]}


@pytest.mark.parametrize("assistant_gateway", [SMALL_WINDOW], indirect=True)
def test_history_over_the_window_is_fitted_and_summarised(assistant_gateway: Gateway) -> None:
    gw = assistant_gateway
    gw.fake.behaviour = Behaviour(text="Noted.")
    conv = new_conversation(gw)
    for i in range(8):
        response = say(gw, conv["id"], f"Fact number {i}: " + "lorem ipsum dolor sit amet " * 40)
        assert response.status_code == 200, response.text
        assert response.json()["stopped"] is None
    summaries = [r for r in gw.fake.requests if "Write an updated summary" in r.json["messages"][-1]["content"]]
    assert summaries, "the history never overflowed the window"
    assert "Fact number 0" in summaries[0].json["messages"][-1]["content"]
    assert {r["endpoint"] for r in usage_records(gw)} == {"assistant", "assistant.summary"}
    last = gw.fake.requests[-1].json["messages"]
    assert last[0]["role"] == "system" and "summary of the earlier conversation" in last[1]["content"]
    assert last[-1]["content"].startswith("Fact number 7")
    assert not any("Fact number 0" in (m.get("content") or "") for m in last[2:])  # folded into the summary
    # Every call fitted the window: none was refused as too long.
    assert all(r["outcome"] == "ok" for r in usage_records(gw))
