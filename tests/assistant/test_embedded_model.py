"""The default configuration: a Free user talks to the embedded model, which cannot call tools."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchboard.api.app import create_app
from switchboard.assistant.turn import REMIND_HINT
from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import add_user
from tests.assistant.conftest import auth
from tests.support.servers import ServerThread


@pytest.fixture
def local_gateway(tmp_path: Path) -> Iterator[tuple[str, str]]:
    settings = Settings(data_dir=tmp_path, local_model={"threads": 1})  # everything else: defaults
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    _, key = add_user(engine, settings, "free@example.com", "free")
    with ServerThread(create_app(settings)) as server:
        yield server.url + "/v1", key
    engine.dispose()


def test_a_free_user_on_the_embedded_model_gets_answers_and_reminders_by_command(
        local_gateway: tuple[str, str]) -> None:
    api, key = local_gateway
    conv = httpx.post(api + "/conversations", headers=auth(key)).json()

    def say(text: str) -> dict:  # type: ignore[type-arg]
        response = httpx.post(f"{api}/conversations/{conv['id']}/messages", headers=auth(key),
                              json={"content": text}, timeout=120)
        assert response.status_code == 200, response.text
        return response.json()

    answer = say("What is the capital of France?")
    assert answer["models"] == ["gemma-3-270m"] and answer["credits_charged"] > 0
    assert answer["message"]["content"].strip()
    asked = say("Remind me to stretch in 10 minutes")
    assert asked["message"]["content"].endswith(REMIND_HINT)  # it cannot set one itself, and says how
    assert httpx.get(api + "/reminders", headers=auth(key)).json()["data"] == []
    by_command = say("/remind in 10 minutes stretch")
    assert by_command["credits_charged"] == 0 and '"stretch"' in by_command["message"]["content"]
    assert [r["text"] for r in httpx.get(api + "/reminders", headers=auth(key)).json()["data"]] == ["stretch"]
