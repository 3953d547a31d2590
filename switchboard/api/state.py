"""What request handlers reach through `request.app.state.sb`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from switchboard.accounts.keys import KeyCache
from switchboard.api.exports import ExportSlots
from switchboard.api.idempotency import Idempotency
from switchboard.api.ratelimit import TokenBuckets
from switchboard.assistant.assistant import Assistant, default_registry
from switchboard.assistant.services import AssistantServices
from switchboard.channels.hub import ChannelHub
from switchboard.crypto import KeyRing, keyring_for
from switchboard.inference.runtime import Runtime
from switchboard.sandbox.tools import sandbox_tools

if TYPE_CHECKING:
    from switchboard.api.sandbox_gateway import Sandboxes


@dataclass(slots=True)
class AppState:
    runtime: Runtime
    keys: KeyCache
    limits: TokenBuckets
    exports: ExportSlots
    sandboxes: Sandboxes | None = None  # where the deployment has a sandbox backend
    # Built from the runtime: loads (or, the first time, creates) the master key at start-up,
    # one key ring for every part that keeps user content (stored responses, conversations).
    keyring: KeyRing = field(init=False)
    idempotency: Idempotency = field(init=False)
    assistant: Assistant = field(init=False)
    channels: ChannelHub = field(init=False)

    def __post_init__(self) -> None:
        runtime = self.runtime
        self.keyring = keyring_for(runtime.settings, runtime.engine)
        self.idempotency = Idempotency(runtime.settings, runtime.engine, runtime.runner, keyring=self.keyring)
        self.idempotency.purge_soon()  # records that expired while no server ran
        registry = default_registry()
        if self.sandboxes is not None:
            registry.add(*sandbox_tools(runtime.settings))
        manager = self.sandboxes.manager if self.sandboxes is not None else None
        self.assistant = Assistant(AssistantServices(runtime, self.keyring, sandboxes=manager), registry)
        self.channels = ChannelHub(self.assistant, runtime.settings)  # Telegram, WhatsApp: docs/channels.md
