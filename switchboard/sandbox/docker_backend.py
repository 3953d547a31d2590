"""The Docker backend: one long-lived container per paid user, each run a `docker exec` in it.

The container (named switchboard-sandbox-u<ID>, labelled switchboard.sandbox=1) is created on
first use with no network, a read-only root filesystem, every capability dropped,
no-new-privileges, pids, memory (swap included) and CPU limits, tmpfs /tmp, the user's uid as
a non-root user, the workspace bound read-write at /workspace, the user's run directory (gateway
socket and token) read-only at /run/switchboard, and gVisor's runsc runtime when the daemon has
it (sandbox.docker.runtime = "auto"). A run is `timeout -s KILL` around the command, so that
its whole process group dies at the time limit; if the exec outlives its limit anyway, the
container is killed. Containers idle for sandbox.docker.idle_stop_s are stopped, and stopped
ones older than stale_remove_s removed (`maintain`, by label).

CPU seconds are the container's cgroup counter before and after the run (the manager runs one
command per user at a time); an exec killed by SIGKILL without reaching its time limit is
reported as killed for memory (Docker does not report the OOM kills of an exec's processes).
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import struct
import time
from typing import Any

from switchboard.core.config import SandboxConfig, SandboxLimits
from switchboard.sandbox import base
from switchboard.sandbox.base import RunResult, RunSpec, SandboxUnavailable, Tenant
from switchboard.sandbox.process import Capped

log = logging.getLogger(__name__)
LABEL = "switchboard.sandbox"
MB = 1024 * 1024
KILL_GRACE_S = 5.0


def container_name(user_id: int) -> str:
    return f"switchboard-sandbox-u{user_id}"


class DockerBackend:
    name = "docker"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.client: Any = None
        self.runtime: str | None = None
        self._used: dict[str, float] = {}  # container name -> last run started by this process

    def check(self) -> None:
        try:
            import docker
        except ImportError:
            raise SandboxUnavailable("the Docker backend needs the docker SDK: pip install 'docker>=7'") from None
        cfg = self.config.docker
        try:
            self.client = docker.DockerClient(base_url=cfg.base_url) if cfg.base_url else docker.from_env()
            self.client.ping()
            runtimes = set((self.client.info().get("Runtimes") or {}).keys())
        except Exception as exc:  # noqa: BLE001 - any failure to reach the daemon
            raise SandboxUnavailable(f"no Docker daemon answers ({exc})") from None
        if cfg.runtime == "auto":
            self.runtime = "runsc" if "runsc" in runtimes else None
        elif cfg.runtime != "default":
            if cfg.runtime not in runtimes:
                raise SandboxUnavailable(f"the Docker daemon has no runtime {cfg.runtime!r} (it has {sorted(runtimes)})")
            self.runtime = cfg.runtime
        try:
            self.client.images.get(cfg.image)
        except Exception:  # noqa: BLE001 - not present locally: pull it once, now
            try:
                self.client.images.pull(cfg.image)
            except Exception as exc:  # noqa: BLE001
                raise SandboxUnavailable(f"the sandbox image {cfg.image} is not available ({exc})") from None

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "image": self.config.docker.image, "runtime": self.runtime or "the daemon's default",
                "network": "none", "root": "read-only", "capabilities": "none"}

    def prepare(self, tenant: Tenant) -> None:
        """The run directory the container mounts (the gateway socket is linked into it per run)."""
        (self._run_dir(tenant)).mkdir(parents=True, exist_ok=True, mode=0o755)

    def _run_dir(self, tenant: Tenant) -> Any:
        return tenant.workspace.parent.parent / "run" / f"u{tenant.user_id}"

    # -- containers ------------------------------------------------------------------------
    def _container(self, tenant: Tenant, limits: SandboxLimits) -> Any:
        import docker

        name = container_name(tenant.user_id)
        wanted = self._fingerprint(tenant, limits)
        try:
            container = self.client.containers.get(name)
            if container.labels.get(f"{LABEL}.spec") != wanted:  # new limits, or the workspace's mode changed
                container.remove(force=True)
                container = self._create(tenant, limits, wanted)
        except docker.errors.NotFound:
            container = self._create(tenant, limits, wanted)
        self._used[name] = time.time()
        if container.status != "running":
            container.start()
            container.reload()
        return container

    def _fingerprint(self, tenant: Tenant, limits: SandboxLimits) -> str:
        """What the container was made with: another one is made when this changes."""
        text = f"{limits.model_dump_json()}|{tenant.read_only}|{tenant.uid}|{self.config.docker.image}|{self.runtime}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _create(self, tenant: Tenant, limits: SandboxLimits, fingerprint: str) -> Any:
        import docker

        volumes = {str(tenant.workspace): {"bind": base.WORKSPACE, "mode": "ro" if tenant.read_only else "rw"},
                   str(self._run_dir(tenant)): {"bind": base.RUN_DIR, "mode": "ro"}}
        return self.client.containers.create(
            self.config.docker.image, ["sleep", "infinity"], name=container_name(tenant.user_id),
            labels={LABEL: "1", f"{LABEL}.user": str(tenant.user_id), f"{LABEL}.spec": fingerprint},
            user=f"{tenant.uid}:{tenant.gid}", working_dir=base.WORKSPACE,
            environment={"PATH": base.PATH, "HOME": base.WORKSPACE},
            network_mode="none", read_only=True, cap_drop=["ALL"], security_opt=["no-new-privileges:true"],
            pids_limit=limits.processes, mem_limit=limits.memory_mb * MB, memswap_limit=limits.memory_mb * MB,
            nano_cpus=int(limits.cpus * 1e9), init=True, runtime=self.runtime,
            tmpfs={"/tmp": f"size={limits.tmp_mb}m,mode=1777", "/var/tmp": f"size={limits.tmp_mb}m,mode=1777"},
            volumes=volumes,
            ulimits=[docker.types.Ulimit(name="nofile", soft=limits.open_files, hard=limits.open_files),
                     docker.types.Ulimit(name="fsize", soft=limits.file_size_mb * MB, hard=limits.file_size_mb * MB),
                     docker.types.Ulimit(name="core", soft=0, hard=0)],
        )

    def _cpu_ns(self, container: Any) -> int | None:
        try:
            stats = container.stats(stream=False, one_shot=True)
            return int(stats["cpu_stats"]["cpu_usage"]["total_usage"])
        except Exception:  # noqa: BLE001 - no figure rather than no run
            return None

    # -- a run -----------------------------------------------------------------------------
    def run(self, tenant: Tenant, spec: RunSpec) -> RunResult:
        if spec.gateway is not None:
            link = self._run_dir(tenant) / "gateway.sock"
            link.unlink(missing_ok=True)
            os.link(spec.gateway.socket, link)  # the socket's inode, visible in the mounted directory
        container = self._container(tenant, spec.limits)
        before = self._cpu_ns(container)
        env = {"PATH": base.PATH, "HOME": base.WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8"}
        if spec.gateway is not None:
            env |= {"SWITCHBOARD_GATEWAY_SOCKET": base.GATEWAY_SOCKET, "SWITCHBOARD_GATEWAY_TOKEN_FILE": base.TOKEN_FILE}
        seconds = max(1, int(spec.timeout_s + 0.999))
        api = self.client.api
        exec_id = api.exec_create(container.id, ["timeout", "-s", "KILL", str(seconds), *spec.argv], stdin=True,
                                  user=f"{tenant.uid}:{tenant.gid}", workdir=base.WORKSPACE, environment=env)["Id"]
        started = time.monotonic()
        out, err = Capped(spec.cap_bytes, bytearray()), Capped(spec.cap_bytes, bytearray())
        killed = self._stream(api.exec_start(exec_id, socket=True), spec, out, err, started + spec.timeout_s + KILL_GRACE_S)
        wall = time.monotonic() - started
        if killed:
            container.kill()  # the exec outlived its limit: nothing of it may go on
        code = api.exec_inspect(exec_id).get("ExitCode")
        after = None if killed else self._cpu_ns(container)
        exit_code = base.KILLED_EXIT if code is None else int(code)
        timed_out = killed or (exit_code == base.KILLED_EXIT and wall >= spec.timeout_s - 0.05)
        notes = ["CPU seconds not measured (no container stats)"] if before is None or after is None else []
        return RunResult(
            exit_code=exit_code, stdout=bytes(out.data), stderr=bytes(err.data), stdout_truncated=out.truncated,
            stderr_truncated=err.truncated, timed_out=timed_out,
            killed_for_memory=exit_code == base.KILLED_EXIT and not timed_out,
            cpu_s=0.0 if before is None or after is None else (after - before) / 1e9, wall_s=wall, notes=notes,
        )

    def _stream(self, sock: Any, spec: RunSpec, out: Capped, err: Capped, deadline: float) -> bool:
        """Send stdin, read Docker's multiplexed frames into the caps; True if the deadline passed."""
        raw: socket.socket = getattr(sock, "_sock", sock)
        try:
            if spec.stdin:
                raw.sendall(spec.stdin)
            raw.shutdown(socket.SHUT_WR)
            buffer = b""
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return True
                raw.settimeout(remaining)
                try:
                    chunk = raw.recv(65536)
                except socket.timeout:
                    return True
                if not chunk:
                    return False
                buffer += chunk
                while len(buffer) >= 8:
                    kind, size = struct.unpack(">BxxxL", buffer[:8])
                    if len(buffer) < 8 + size:
                        break
                    data, buffer = buffer[8:8 + size], buffer[8 + size:]
                    name = "stderr" if kind == 2 else "stdout"
                    (err if kind == 2 else out).add(data)
                    if spec.on_output is not None:
                        spec.on_output(name, data)
        finally:
            raw.close()

    # -- housekeeping ----------------------------------------------------------------------
    def maintain(self) -> None:
        """Stop containers idle too long, remove stopped ones past their time (by label)."""
        if self.client is None:
            return
        now = time.time()
        cfg = self.config.docker
        for container in self.client.containers.list(all=True, filters={"label": LABEL}):
            idle = now - max(self._used.get(container.name, 0.0), _started_at(container))
            try:
                if container.status == "running" and idle > cfg.idle_stop_s:
                    container.stop(timeout=2)
                elif container.status != "running" and idle > cfg.stale_remove_s:
                    container.remove(force=True)
            except Exception as exc:  # noqa: BLE001 - one container's trouble must not stop the sweep
                log.warning("could not tidy the sandbox container %s: %s", container.name, exc)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def _started_at(container: Any) -> float:
    from datetime import datetime

    text = (container.attrs.get("State") or {}).get("StartedAt") or ""
    try:
        return datetime.fromisoformat(text[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0
