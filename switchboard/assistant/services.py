"""What the assistant's parts share in one process: the metered runtime, the key ring, the
conversation and reminder stores, the sandbox manager (when configured). Built once per process
(api.app's lifespan, the CLI) and handed to turns and tools, so that a tool module needs no
globals.

Database work goes through two doors. `write` runs on the ledger's writer (store.runner), in
the user's lane: on SQLite one writer thread means no two writes of this process wait on each
other's lock, and a turn's writes are committed in order with its charges. `read` runs on a
worker thread. Both load the user's data key first, off the event loop, because a key made on
first use is saved in a transaction of its own, which must never run inside the writer's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection

from switchboard.assistant.conversations import Conversations
from switchboard.assistant.reminders import Reminders
from switchboard.memory.service import MemoryService
from switchboard.store.db import read

if TYPE_CHECKING:
    from switchboard.crypto import KeyRing
    from switchboard.inference.runtime import Runtime

T = TypeVar("T")


class AssistantServices:
    def __init__(self, runtime: Runtime, keyring: KeyRing, sandboxes: Any = None) -> None:
        self.runtime = runtime
        self.keyring = keyring
        self.sandboxes = sandboxes  # switchboard.sandbox's manager, where the deployment has one
        self.conversations = Conversations(keyring)
        self.reminders = Reminders(keyring, self.conversations)
        self.memory = MemoryService(runtime.engine, keyring, runtime.settings.memory, write=self.write)  # long-term memory

    async def write(self, user_id: int, work: Callable[[Connection], T]) -> T:
        await self.keyring.prepare(user_id)
        return await self.runtime.runner.run(work, order_key=user_id)

    async def read(self, user_id: int, work: Callable[[Connection], T]) -> T:
        await self.keyring.prepare(user_id)
        return await asyncio.to_thread(read, self.runtime.engine, work)
