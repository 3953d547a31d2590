"""The sandbox manager: whose sandbox, with which limits, one run at a time, and the way out.

Built once per process from the settings (`SandboxManager.from_settings`, then `start()`, which
checks the backend for real and fails the start-up if it cannot work). It owns the layout under
the sandbox root (DATA_DIR/sandbox by default, 0700):

    workspaces/u<ID>/   the user's files, owned by their uid (uid_base + ID), 0700
    run/u<ID>/          per-run files: the gateway token (owned by the uid, 0400)
    gateway/<pid>.sock  this process's gateway socket, when one is attached
    locks/u<ID>.lock    one run at a time per user, across server processes (flock)
    state/u<ID>.json    runs and CPU seconds so far, for `switchboard sandbox status`
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from switchboard.core.config import SandboxLimits, Settings
from switchboard.sandbox.base import Backend, Busy, GatewayAccess, RunResult, RunSpec, SandboxError, Tenant
from switchboard.sandbox.token import GatewayTokens, Grant
from switchboard.sandbox.workspace import Workspace

log = logging.getLogger(__name__)
SETTLE_WAIT_S = 3.0  # after a run, how long to wait for its model calls' charges to be known


def make_backend(settings: Settings) -> Backend | None:
    """The configured backend (not yet checked); None for "none"."""
    config = settings.sandbox
    if config.backend == "bubblewrap":
        from switchboard.sandbox.bubblewrap import BubblewrapBackend

        return BubblewrapBackend(config)
    if config.backend == "docker":
        from switchboard.sandbox.docker_backend import DockerBackend

        return DockerBackend(config)
    if config.backend == "subprocess":
        from switchboard.sandbox.subprocess_backend import SubprocessBackend

        return SubprocessBackend(config)
    return None


class SandboxManager:
    def __init__(self, settings: Settings, backend: Backend) -> None:
        self.settings = settings
        self.config = settings.sandbox
        self.backend = backend
        self.root = Path(self.config.root or settings.data_dir / "sandbox").absolute()
        self.tokens = GatewayTokens()
        self.gateway_socket: Path | None = None
        self.per_user_uid = os.geteuid() == 0 and backend.name != "subprocess"
        # Runs wait on threads of their own, never on the event loop's shared default executor
        # (database reads use it): 30-second runs there would stall every other request.
        self._threads = ThreadPoolExecutor(self.config.concurrent_runs, thread_name_prefix="sandbox")

    @classmethod
    def from_settings(cls, settings: Settings) -> "SandboxManager | None":
        """The manager for this deployment, not started; None when sandbox.backend is "none"."""
        backend = make_backend(settings)
        return None if backend is None else cls(settings, backend)

    def start(self) -> "SandboxManager":
        """Lay out the root and check the backend for real: SandboxUnavailable if it cannot work."""
        for sub in ("", "workspaces", "run", "locks", "state", "gateway"):
            path = self.root / sub
            path.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(path, 0o700)
        self.backend.check()
        log.info("sandbox backend ready: %s", self.backend.describe())
        return self

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)
        self.backend.close()

    async def maintain_forever(self, every_s: float = 60.0) -> None:
        """The backend's housekeeping (Docker: stop idle containers, remove stale ones), every
        `every_s`, for as long as the server runs (a task of the app's lifespan)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.backend.maintain)
            except Exception:  # noqa: BLE001 - logged, and tried again next time
                log.exception("sandbox housekeeping failed")

    # -- who and what ----------------------------------------------------------------------
    def has_sandbox(self, plan: str) -> bool:
        config = self.settings.plans.get(plan)
        return config is not None and config.sandbox

    def limits(self, plan: str) -> SandboxLimits:
        return self.config.limits_for(plan)

    def uid(self, user_id: int) -> int | None:
        return self.config.uid_base + user_id if self.per_user_uid else None

    def workspace(self, user_id: int, plan: str) -> Workspace:
        limits = self.limits(plan)
        uid = self.uid(user_id)
        return Workspace(self.root / "workspaces" / f"u{user_id}", uid, uid, limits.workspace_mb * 1024 * 1024,
                         limits.workspace_files)

    def _require(self, plan: str) -> None:
        if not self.has_sandbox(plan):
            raise SandboxError(f"the {plan} plan has no sandbox")

    # -- runs ------------------------------------------------------------------------------
    @contextmanager
    def locked(self, user_id: int, wait_s: float) -> Iterator[None]:
        """The user's sandbox to ourselves (one run at a time per user, across processes)."""
        path = self.root / "locks" / f"u{user_id}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise Busy("this user's sandbox is busy with another run; try again shortly") from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    def run(
        self,
        user_id: int,
        plan: str,
        argv: list[str] | tuple[str, ...],
        *,
        stdin: bytes = b"",
        time_s: float | None = None,
        output_bytes: int | None = None,
        on_output: Callable[[str, bytes], None] | None = None,
        grant: Grant | None = None,
    ) -> RunResult:
        """Run `argv` in the user's sandbox, in their workspace; blocks (see `run_async`).
        With a `grant`, the run can call models through the gateway under its token."""
        self._require(plan)
        if not argv:
            raise SandboxError("no command to run")
        limits = self.limits(plan)
        spec = RunSpec(tuple(argv), limits, stdin=stdin, time_s=time_s, output_bytes=output_bytes, on_output=on_output)
        with self.locked(user_id, spec.timeout_s + 30):
            workspace = self.workspace(user_id, plan)
            workspace.ensure()
            read_only = workspace.over_quota()
            uid = self.uid(user_id)
            tenant = Tenant(user_id, uid if uid is not None else os.geteuid(), uid if uid is not None else os.getegid(),
                            workspace.path, read_only=read_only)
            self.backend.prepare(tenant)
            spec = replace(spec, check=_quota_check(workspace) if not read_only else None,
                           gateway=self._gateway_access(tenant, grant))
            try:
                result = self.backend.run(tenant, spec)
            finally:
                if spec.gateway is not None:
                    self._end_gateway(spec.gateway, grant)
            if read_only:
                result.notes.append("the workspace is over its quota: it was read-only for this run; delete files "
                                    "to make it writable again")
            if result.quota_exceeded:
                result.notes.append("the run was stopped: the workspace went over its quota")
            if grant is not None:
                result.gateway_calls, result.gateway_ucr = _settled(grant)
            self._record(user_id, result)
            return result

    async def run_async(self, *args: Any, **kwargs: Any) -> RunResult:
        """`run` on one of the manager's threads, so the event loop (and the gateway socket)
        keeps serving. Cancelling the caller does not stop the run: it ends at its time limit."""
        return await asyncio.get_running_loop().run_in_executor(self._threads, partial(self.run, *args, **kwargs))

    # -- the way out: the gateway ----------------------------------------------------------
    def attach_gateway(self, socket: Path) -> None:
        """This process serves the gateway on `socket` (api.sandbox_gateway); runs given a grant
        get it bound in, with their token."""
        self.gateway_socket = socket

    def grant(self, user_id: int, plan: str, turn_id: str, limit_ucr: int) -> Grant | None:
        """A token for one run of this turn, allowed `limit_ucr` of model calls; None when no
        gateway is attached or nothing is left to spend."""
        if self.gateway_socket is None or limit_ucr <= 0:
            return None
        return self.tokens.issue(user_id, plan, turn_id, limit_ucr, self.config.gateway_token_ttl_s)

    def _gateway_access(self, tenant: Tenant, grant: Grant | None) -> GatewayAccess | None:
        if grant is None or self.gateway_socket is None:
            return None
        token = self.tokens.encode(grant)
        directory = self.root / "run" / f"u{tenant.user_id}"
        directory.mkdir(exist_ok=True, mode=0o755)
        os.chmod(directory, 0o755)
        path = directory / "token"
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, tenant.uid, tenant.gid)
            os.write(fd, token.encode())
        finally:
            os.close(fd)
        return GatewayAccess(self.gateway_socket, path)

    def _end_gateway(self, access: GatewayAccess, grant: Grant | None) -> None:
        access.token_file.unlink(missing_ok=True)
        if grant is not None:
            self.tokens.revoke(grant)
            deadline = time.monotonic() + SETTLE_WAIT_S
            while grant.reserved and time.monotonic() < deadline:
                time.sleep(0.05)

    # -- status ----------------------------------------------------------------------------
    def _state_path(self, user_id: int) -> Path:
        return self.root / "state" / f"u{user_id}.json"

    def state(self, user_id: int) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_path(user_id).read_text()))
        except (OSError, ValueError):
            return {"runs": 0, "cpu_s": 0.0, "last_run_ms": None}

    def _record(self, user_id: int, result: RunResult) -> None:
        state = self.state(user_id)
        state["runs"] = int(state.get("runs", 0)) + 1
        state["cpu_s"] = round(float(state.get("cpu_s", 0.0)) + result.cpu_s, 3)
        state["last_run_ms"] = int(time.time() * 1000)
        state["last_status"] = result.status
        path = self._state_path(user_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, path)

    def users(self) -> list[int]:
        """Users who have a workspace."""
        found = []
        for entry in (self.root / "workspaces").glob("u*"):
            if entry.name[1:].isdigit():
                found.append(int(entry.name[1:]))
        return sorted(found)

    def status(self, user_id: int, plan: str) -> dict[str, Any]:
        workspace = self.workspace(user_id, plan)
        usage = workspace.usage()
        limits = self.limits(plan)
        state = self.state(user_id)
        return {
            "user_id": user_id, "plan": plan, "backend": self.backend.name, "uid": self.uid(user_id),
            "workspace": str(workspace.path), "workspace_bytes": usage.bytes, "workspace_files": usage.files,
            "over_quota": workspace.over_quota(usage), "runs": state.get("runs", 0), "cpu_s": state.get("cpu_s", 0.0),
            "last_run_ms": state.get("last_run_ms"), "limits": limits.model_dump(),
        }


def _quota_check(workspace: Workspace) -> Callable[[], str | None]:
    """During a run: stop it once the workspace is past its quota (checked every half second)."""
    def check() -> str | None:
        return "quota" if workspace.over_quota() else None
    return check


def _settled(grant: Grant) -> tuple[int, int]:
    return grant.calls, grant.spent_ucr
