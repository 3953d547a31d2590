"""Real `switchboard serve` processes with the assistant, sharing one database (SQLite or
PostgreSQL), in front of the fake upstream: what the multi-process tests start."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from switchboard.core.config import Settings
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from tests.api.conftest import Gateway, add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.config import fake_model_toml
from tests.support.servers import ServerProcess

# A plan whose turns may spend a lot: the fake model is expensive (0.2 credits a prompt token,
# 0.4 an output token) and a turn's hold covers the model's whole output window.
ROOMY_PLAN = """
[plans.roomy]
name = "roomy"
monthly_usd = 0
monthly_credits = 1000000
turn_credits = 20000
"""


class Servers:
    """The environment every server process of a test gets, and the database they share."""

    def __init__(self, tmp_path: Path, database_url: str, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch,
                 **extra: str) -> None:
        config = tmp_path / "switchboard.toml"
        config.write_text(fake_model_toml(fake.url, ROOMY_PLAN))
        self.env = {
            "SWITCHBOARD_CONFIG": str(config), "SWITCHBOARD_DATABASE_URL": database_url,
            "SWITCHBOARD_DATA_DIR": str(tmp_path / "data"), "SWITCHBOARD_LOCAL_MODEL__ENABLED": "false",
            "SWITCHBOARD_RATE_LIMIT__REQUESTS_PER_MINUTE": "0", "SWITCHBOARD_LOG_LEVEL": "info", **extra,
        }
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)
        self.settings = Settings()
        self.fake = fake
        self.engine: Engine = make_engine(database_url)
        upgrade(self.engine)

    def user(self, email: str) -> tuple[int, str]:
        return add_user(self.engine, self.settings, email, "roomy")

    def process(self) -> ServerProcess:
        return ServerProcess(self.env)

    def gateway(self, server: ServerProcess, user: tuple[int, str]) -> Gateway:
        """The conftest helpers' view of one server for one user."""
        return Gateway(server.url, user[1], user[0], self.fake, self.settings, self.engine)
