"""What request handlers reach through `request.app.state.sb`."""

from __future__ import annotations

from dataclasses import dataclass

from switchboard.accounts.keys import KeyCache
from switchboard.api.exports import ExportSlots
from switchboard.api.ratelimit import TokenBuckets
from switchboard.inference.runtime import Runtime


@dataclass(slots=True)
class AppState:
    runtime: Runtime
    keys: KeyCache
    limits: TokenBuckets
    exports: ExportSlots
