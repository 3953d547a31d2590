"""The development backend: the command as a plain child process. NO ISOLATION.

It exists so that the sandbox tools can be tried on a laptop without bubblewrap or Docker:
the command runs as the server's own user, sees the whole filesystem and the network. It gets
a cleared environment, the workspace as its directory, rlimits and a new session killed at the
time limit, nothing more. It starts only with `sandbox.backend = "subprocess"` and
SWITCHBOARD_ENV=development, and never as root.
"""

from __future__ import annotations

import math
import os
import shutil
from typing import Any

from switchboard.core.config import SandboxConfig
from switchboard.sandbox import process
from switchboard.sandbox.base import PATH, RunResult, RunSpec, SandboxUnavailable, Tenant

MB = 1024 * 1024


class SubprocessBackend:
    name = "subprocess"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config

    def check(self) -> None:
        if os.environ.get("SWITCHBOARD_ENV") != "development":
            raise SandboxUnavailable(
                'sandbox.backend = "subprocess" isolates nothing and runs only with SWITCHBOARD_ENV=development')
        if os.geteuid() == 0:
            raise SandboxUnavailable("the subprocess backend does not run as root (it would run users' code as root)")
        if shutil.which("prlimit") is None:
            raise SandboxUnavailable("`prlimit` (util-linux) is missing on this machine")

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "isolation": "none (development only)", "uid": "the server's"}

    def prepare(self, tenant: Tenant) -> None:
        """The workspace is the server's own directory: nothing to change."""

    def maintain(self) -> None:
        """Nothing lingers between runs."""

    def close(self) -> None:
        """Nothing to release."""

    def run(self, tenant: Tenant, spec: RunSpec) -> RunResult:
        limits = spec.limits
        cpu = math.ceil(spec.cpu_cap_s) + 1
        argv = ["prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={limits.address_space_mb * MB}",
                f"--fsize={limits.file_size_mb * MB}", f"--nofile={limits.open_files}", "--core=0", "--", *spec.argv]
        env = {"PATH": PATH, "HOME": str(tenant.workspace), "TMPDIR": str(tenant.workspace), "LANG": "C.UTF-8"}
        outcome = process.run(argv, stdin=spec.stdin, timeout_s=spec.timeout_s, cap_bytes=spec.cap_bytes, env=env,
                              cwd=str(tenant.workspace), check=spec.check, on_output=spec.on_output)
        return process.result(outcome, notes=["development backend: no isolation"])
