"""A real gateway on a real port in front of a fake vendor that bills the way OpenAI does:
prompt tokens over everything it reads (tests/fakes/vendor_billing.py), output as produced.

Prices are the issue's: USD 3 / 15 per million tokens, so one prompt token is 600 micro-credits
and one output token 3,000 (1 credit = USD 0.005). A Free user starts with 100 credits.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, select

from switchboard.api.app import create_app
from switchboard.billing.ledger import Balance
from switchboard.core.config import Settings
from switchboard.inference.runtime import make_ledger
from switchboard.store.db import make_engine
from switchboard.store.migrate import upgrade
from switchboard.store.schema import holds, usage_records
from tests.api.conftest import add_user
from tests.fakes.openai_upstream import FakeOpenAI
from tests.support.servers import ServerThread

PROMPT_UCR = 600  # per prompt token
OUTPUT_UCR = 3_000  # per output token
C = 1_000_000  # micro-credits in a credit
ABILITIES = ["tools", "vision", "json"]


def vendor_settings(tmp_path: Path, upstream_url: str, kind: str = "openai") -> Settings:
    """`wide`: a 128K-token window; `narrow`: 4,096 tokens. Both upstream-named gpt-4o (o200k,
    OpenAI's image rule) at USD 3 / 15."""
    price = {"input_usd_per_mtok": 3, "output_usd_per_mtok": 15, "abilities": ABILITIES}
    return Settings(
        data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path / 'gw.db'}",
        local_model={"enabled": False}, rate_limit={"requests_per_minute": 0}, shipped_catalog=False,
        default_model="wide",
        providers=[{"name": "vendor", "kind": kind, "base_url": upstream_url, "api_key_env": "VENDOR_TEST_KEY",
                    "read_timeout_s": 2}],
        models=[
            {"name": "wide", "provider": "vendor", "upstream_name": "gpt-4o", "context_window": 128_000,
             "max_output_tokens": 16_000, **price},
            {"name": "narrow", "provider": "vendor", "upstream_name": "gpt-4o", "context_window": 4096,
             "max_output_tokens": 1000, **price},
        ],
    )


@dataclass
class VendorGateway:
    url: str
    fake: FakeOpenAI
    settings: Settings
    engine: Engine
    _users: int = field(default=0)

    @property
    def api(self) -> str:
        return self.url + "/v1"

    def user(self, plan: str = "free") -> tuple[int, str]:
        """A new user (Free: 100 credits) and an API key."""
        self._users += 1
        return add_user(self.engine, self.settings, f"user{self._users}@example.com", plan)

    def post(self, key: str, body: dict[str, Any], **headers: str) -> httpx.Response:
        return httpx.post(self.api + "/chat/completions", json=body,
                          headers={"Authorization": f"Bearer {key}", **headers}, timeout=30)

    def balance(self, user_id: int) -> Balance:
        with self.engine.connect() as conn:
            return make_ledger(self.settings).balance(conn, user_id)

    def holds(self, user_id: int) -> list[dict[str, Any]]:
        """The user's holds, oldest first: amount_ucr, charged_ucr, status, request_id."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(holds.c.amount_ucr, holds.c.charged_ucr, holds.c.status, holds.c.request_id)
                                .where(holds.c.user_id == user_id).order_by(holds.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def records(self, user_id: int) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(usage_records).where(usage_records.c.user_id == user_id)
                                .order_by(usage_records.c.id)).mappings().all()
        return [dict(r) for r in rows]

    def account_balances(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return make_ledger(self.settings).account_balances(conn)

    def verify(self) -> list[Any]:
        with self.engine.connect() as conn:
            return make_ledger(self.settings).verify(conn)


def start_gateway(tmp_path: Path, fake: FakeOpenAI, kind: str = "openai") -> Iterator[VendorGateway]:
    settings = vendor_settings(tmp_path, fake.url, kind)
    engine = make_engine(settings.resolved_database_url)
    upgrade(engine)
    with ServerThread(create_app(settings)) as server:
        yield VendorGateway(server.url, fake, settings, engine)
    engine.dispose()


@pytest.fixture
def vendor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[VendorGateway]:
    """The gateway, its vendor billing like OpenAI (o200k, tools and formats in the prompt)."""
    monkeypatch.setenv("VENDOR_TEST_KEY", "test-secret-key-123")
    with FakeOpenAI() as fake:
        fake.configure(bill_like_vendor=True)
        yield from start_gateway(tmp_path, fake)
