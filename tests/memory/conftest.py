"""Long-term memory on a real database (SQLite and PostgreSQL), with the real embedding model."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine

from switchboard.accounts.users import create_user
from switchboard.core.config import MemoryConfig, Settings
from switchboard.crypto import KeyRing, MasterKeys
from switchboard.inference.runtime import make_ledger
from switchboard.memory.service import MemoryService


@dataclass
class Setup:
    engine: Engine
    keyring: KeyRing
    memory: MemoryService

    def user(self, email: str) -> int:
        with self.engine.begin() as conn:
            return create_user(conn, make_ledger(Settings(local_model={"enabled": False})), email, "plus").id

    def another_process(self) -> MemoryService:
        """A memory service as a second server process has it: its own key ring and index cache."""
        return MemoryService(self.engine, KeyRing(self.engine, self.keyring.master), self.memory.config)


@pytest.fixture
def setup(engine: Engine) -> Setup:
    keyring = KeyRing(engine, MasterKeys(os.urandom(32)))
    return Setup(engine, keyring, MemoryService(engine, keyring, MemoryConfig()))
