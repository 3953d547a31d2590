"""The one interface every sandbox backend implements, and what a run gives back.

A backend runs one command for one tenant: argv, stdin, a time limit and resource limits in,
a `RunResult` out (exit status, capped output, whether the time or memory limit killed it, CPU
seconds and wall time). Backends are interchangeable behind `Backend`; the manager
(sandbox.manager) decides who may run what and what it costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from switchboard.core.config import SandboxLimits

# Where things are inside every sandbox, whatever the backend.
WORKSPACE = "/workspace"
RUN_DIR = "/run/switchboard"
GATEWAY_SOCKET = RUN_DIR + "/gateway.sock"
TOKEN_FILE = RUN_DIR + "/token"
PATH = "/usr/local/bin:/usr/bin:/bin"
# A child killed by a signal exits with 128 + the signal, as shells report it.
TIMEOUT_EXIT = 124  # timeout(1)'s status: the time limit killed the command
KILLED_EXIT = 137  # 128 + SIGKILL: the memory limit killed the command


class SandboxError(Exception):
    """A run could not be started or finished (not the command failing: that is a RunResult)."""


class SandboxUnavailable(SandboxError):
    """The configured backend cannot work on this machine; raised at start-up, never bypassed."""


class Busy(SandboxError):
    """The user's sandbox is running something else and did not become free in time."""


@dataclass(frozen=True, slots=True)
class Tenant:
    """Whose sandbox: the user, the host uid/gid their processes run as, their workspace."""

    user_id: int
    uid: int
    gid: int
    workspace: Path
    read_only: bool = False  # the workspace is over its quota: mounted read-only until files go


@dataclass(frozen=True, slots=True)
class GatewayAccess:
    """The way out to the gateway for one run: a socket on the host bound into the sandbox at
    GATEWAY_SOCKET, and a file (on the host, owned by the tenant, mode 0400) bound at TOKEN_FILE."""

    socket: Path
    token_file: Path


@dataclass(frozen=True, slots=True)
class RunSpec:
    """One command to run."""

    argv: tuple[str, ...]
    limits: SandboxLimits
    stdin: bytes = b""
    time_s: float | None = None  # None: limits.time_s
    output_bytes: int | None = None  # None: limits.output_kb KiB per stream
    gateway: GatewayAccess | None = None
    # Each chunk of output as it arrives ("stdout" | "stderr", bytes), besides the capped copy:
    # the operator's `sandbox exec` prints it unchanged.
    on_output: Callable[[str, bytes], None] | None = None
    # Called every half second during the run; a reason (e.g. "quota") stops it there.
    check: Callable[[], str | None] | None = None

    @property
    def timeout_s(self) -> float:
        return self.time_s if self.time_s is not None else self.limits.time_s

    @property
    def cap_bytes(self) -> int:
        return self.output_bytes if self.output_bytes is not None else self.limits.output_kb * 1024

    @property
    def cpu_cap_s(self) -> float:
        """The most CPU time a run can be charged: every core it may use for its whole time."""
        return self.limits.cpus * self.timeout_s


@dataclass(slots=True)
class RunResult:
    exit_code: int  # the command's status; 128 + N when signal N ended it
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    timed_out: bool = False
    killed_for_memory: bool = False
    quota_exceeded: bool = False  # the workspace went past its quota during the run: stopped
    cpu_s: float = 0.0
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)  # what the backend could not enforce or measure
    gateway_calls: int = 0  # model calls made through the gateway socket during the run
    gateway_ucr: int = 0  # and what they were charged (their own ledger transactions)

    @property
    def status(self) -> int:
        """The status an operator's shell sees: 124 at the time limit, 137 at the memory limit."""
        if self.timed_out:
            return TIMEOUT_EXIT
        if self.killed_for_memory:
            return KILLED_EXIT
        return self.exit_code

    def charged_cpu_s(self, spec: RunSpec) -> float:
        """CPU seconds to charge: what was used, never more than the run could use."""
        return min(self.cpu_s, spec.cpu_cap_s)

    def charged_cpu_ms(self, spec: RunSpec) -> int:
        return math.ceil(self.charged_cpu_s(spec) * 1000)

    def as_json(self) -> dict[str, Any]:
        return {"exit_code": self.status, "stdout": self.stdout.decode("utf-8", "replace"),
                "stderr": self.stderr.decode("utf-8", "replace"), "timed_out": self.timed_out,
                "cpu_s": round(self.cpu_s, 3), "wall_s": round(self.wall_s, 3)}


class Backend(Protocol):
    """A way to isolate a tenant's command. `check` runs at start-up and raises
    SandboxUnavailable naming what is missing; `run` blocks (the manager calls it on a thread)."""

    name: str

    def check(self) -> None: ...

    def describe(self) -> dict[str, Any]:
        """What this backend enforces here (for `sandbox status` and the logs)."""
        ...

    def run(self, tenant: Tenant, spec: RunSpec) -> RunResult: ...

    def prepare(self, tenant: Tenant) -> None:
        """Make the tenant's workspace usable by its uid (ownership, mode)."""
        ...

    def maintain(self) -> None:
        """Periodic housekeeping (stop idle containers, remove stale ones)."""
        ...

    def close(self) -> None: ...
