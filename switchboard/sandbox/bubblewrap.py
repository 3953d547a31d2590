"""The bubblewrap backend: a fresh set of Linux namespaces for every run.

How one run is launched (all of it as root, until the last step):

    sh (writes its pid into the run's cgroups)
      -> prlimit (CPU, address space, processes, file size, open files, no core files)
        -> bwrap --args FD   (privileged: new mount, pid, net, ipc, uts, cgroup namespaces;
                              /usr read-only, a read-only /etc of our own, tmpfs /tmp, the
                              workspace read-write, the rest of the root read-only; keeps
                              only CAP_SETUID/SETGID/SETPCAP/DAC_READ_SEARCH, sets no_new_privs and the
                              seccomp filter, dies with its parent, new session)
          -> setpriv: the tenant's own uid and gid, no groups, empty bounding and
                      inheritable sets (so no capability is left), then the command.

bwrap runs privileged rather than in a user namespace because an unprivileged bwrap maps the
sandbox's uid to its caller's: as root, the sandbox would be root on the host's files, and
every tenant would share one uid. The arguments travel through a pipe (`--args`), so even the
sandbox's own /proc/1/cmdline shows no host path (only setpriv and the command), and the
environment starts empty.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchboard.core.config import SandboxConfig, SandboxLimits
from switchboard.sandbox import process, seccomp
from switchboard.sandbox.base import (
    GATEWAY_SOCKET,
    KILLED_EXIT,
    PATH,
    RUN_DIR,
    TOKEN_FILE,
    WORKSPACE,
    RunResult,
    RunSpec,
    SandboxUnavailable,
    Tenant,
)
from switchboard.sandbox.cgroups import Cgroups, RunGroup

MERGED_USR = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Host /etc entries a shell and python3 need that hold nothing private (alternatives: Debian's
# links for awk, editor, ...; python3.x: sitecustomize).
HOST_ETC = ("alternatives", "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime")
SETPRIV = "/usr/bin/setpriv"
MB = 1024 * 1024


def _etc_files(tenant: Tenant) -> dict[str, bytes]:
    """The sandbox's own /etc files: the tenant as `sandbox`, localhost, files-only lookups."""
    return {
        "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{tenant.uid}:{tenant.gid}:sandbox:{WORKSPACE}:/bin/sh\n"
                  "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n".encode(),
        "group": f"root:x:0:\nsandbox:x:{tenant.gid}:\nnogroup:x:65534:\n".encode(),
        "hosts": b"127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
        "hostname": b"sandbox\n",
        "nsswitch.conf": b"passwd: files\ngroup: files\nshadow: files\nhosts: files\n",
    }


@dataclass(slots=True)
class _Fds:
    """Pipes whose contents bwrap reads at start-up (arguments, seccomp filter, /etc files)."""

    fds: list[int] = field(default_factory=list)

    def add(self, data: bytes) -> int:
        if len(data) > 60_000:  # a pipe's buffer holds 64 KiB: written whole before bwrap starts
            raise ValueError("too much data for a start-up pipe")
        read_end, write_end = os.pipe()
        try:
            os.write(write_end, data)
        finally:
            os.close(write_end)
        self.fds.append(read_end)
        return read_end

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


class BubblewrapBackend:
    name = "bubblewrap"

    def __init__(self, config: SandboxConfig) -> None:
        self.config = config
        self.bwrap = shutil.which(config.bwrap) or config.bwrap
        self.cgroups = Cgroups()
        self._seccomp = b""

    # -- start-up --------------------------------------------------------------------------
    def check(self) -> None:
        """Everything a run needs, and one real run: raises SandboxUnavailable saying what is
        missing and how to get it."""
        if not Path(self.bwrap).is_file():
            raise SandboxUnavailable(
                f"bubblewrap ({self.config.bwrap}) is not installed: `make setup` installs it as root "
                "(apt-get install bubblewrap); or set sandbox.backend to docker or none")
        if os.geteuid() != 0:
            raise SandboxUnavailable(
                "the bubblewrap backend runs the server as root, so that each user's sandbox gets a uid of "
                "its own (as another user every tenant would share the server's); run as root, or set "
                "sandbox.backend to docker or none")
        for tool in ("prlimit", "sh"):
            if shutil.which(tool) is None:
                raise SandboxUnavailable(f"`{tool}` (util-linux / a POSIX shell) is missing on this machine")
        if not Path(SETPRIV).is_file():
            raise SandboxUnavailable(f"{SETPRIV} (util-linux) is missing: it drops each sandbox to its user's uid")
        if self.config.seccomp:
            if not seccomp.supported():
                raise SandboxUnavailable("no seccomp filter for this architecture; set sandbox.seccomp = false to run without")
            self._seccomp = seccomp.program()
        self.cgroups = Cgroups.detect()
        probe = self._probe()
        if probe.exit_code != 0 or probe.stdout.strip() != b"ok":
            reason = (probe.stderr or probe.stdout).decode("utf-8", "replace").strip()
            raise SandboxUnavailable(f"bubblewrap cannot create its namespaces here: {reason[:500]}")

    def _probe(self) -> RunResult:
        """A real run of `echo ok` in a throwaway workspace, as uid_base (no user's)."""
        scratch = Path(self._scratch_dir())
        try:
            os.chown(scratch, self.config.uid_base, self.config.uid_base)
            tenant = Tenant(0, self.config.uid_base, self.config.uid_base, scratch)
            return self.run(tenant, RunSpec(("/bin/sh", "-c", "echo ok"), SandboxLimits(), time_s=20))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    @staticmethod
    def _scratch_dir() -> str:
        return tempfile.mkdtemp(prefix="switchboard-sandbox-probe-")

    def describe(self) -> dict[str, Any]:
        cg = self.cgroups
        return {
            "backend": self.name, "bwrap": self.bwrap, "uid": f"{self.config.uid_base} + user id",
            "namespaces": "mount, pid, net, ipc, uts, cgroup", "seccomp": bool(self._seccomp),
            "cgroups": f"v{cg.version}: {', '.join(cg.controllers)}" if cg.version else f"none ({cg.why_not})",
        }

    def prepare(self, tenant: Tenant) -> None:
        """Nothing beyond the workspace the manager made: bwrap starts from scratch every run."""

    def maintain(self) -> None:
        """Nothing lingers between runs."""

    def close(self) -> None:
        """Nothing to release."""

    # -- a run -----------------------------------------------------------------------------
    def run(self, tenant: Tenant, spec: RunSpec) -> RunResult:
        group = self.cgroups.create(f"u{tenant.user_id}-{os.getpid()}-{os.urandom(4).hex()}", spec.limits)
        fds = _Fds()
        try:
            argv = [*self._launcher(group, spec), self.bwrap, "--args", str(fds.add(self._bwrap_args(tenant, spec, fds))),
                    "--", *self._command(tenant, spec)]
            cpu_before = group.cpu_s() if group else None

            def kill(proc: subprocess.Popen[bytes]) -> None:
                if group is not None:
                    group.kill_all()
                process.kill_group(proc)

            outcome = process.run(
                argv, stdin=spec.stdin, timeout_s=spec.timeout_s, cap_bytes=spec.cap_bytes,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}, pass_fds=fds.fds, kill=kill, check=spec.check,
                on_output=spec.on_output,
            )
            fds.close()
            cpu_s, notes = outcome.cpu_s, []
            oom = False
            if group is not None:
                group.kill_all()  # nothing of the run outlives it
                after = group.cpu_s()
                if after is not None and cpu_before is not None:
                    cpu_s = after - cpu_before
                oom = group.oom_kills() > 0 and outcome.exit_code == KILLED_EXIT
            else:
                notes.append("no writable cgroup: memory and CPU bounded by rlimits only; CPU of processes "
                             "killed at the time limit is not counted")
            return process.result(outcome, killed_for_memory=oom and not outcome.timed_out, cpu_s=cpu_s, notes=notes)
        finally:
            fds.close()
            if group is not None:
                group.kill_all()
                group.remove()

    @staticmethod
    def _command(tenant: Tenant, spec: RunSpec) -> list[str]:
        """setpriv, then the command: the only arguments on bwrap's command line."""
        return [SETPRIV, f"--reuid={tenant.uid}", f"--regid={tenant.gid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--", *spec.argv]

    def _launcher(self, group: RunGroup | None, spec: RunSpec) -> list[str]:
        """sh (into the cgroups) and prlimit: what runs before bwrap, as root."""
        limits = spec.limits
        cpu = math.ceil(spec.cpu_cap_s) + 1  # per process; the wall-clock limit comes first anyway
        prlimit = [
            "prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={limits.address_space_mb * MB}",
            f"--nproc={limits.processes}", f"--fsize={limits.file_size_mb * MB}",
            f"--nofile={limits.open_files}", "--core=0", "--",
        ]
        if group is None:
            return prlimit
        files = [str(p) for p in group.procs_files]
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["sh", "-c", script, "sh", *files, "--", *prlimit]

    def _bwrap_args(self, tenant: Tenant, spec: RunSpec, fds: _Fds) -> bytes:
        limits = spec.limits
        args = [
            "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", "sandbox", "--die-with-parent", "--new-session", "--clearenv",
            "--ro-bind", "/usr", "/usr",
        ]
        for name in MERGED_USR:
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{name}"]
        args += ["--perms", "0755", "--tmpfs", "/etc"]
        for name, data in _etc_files(tenant).items():
            args += ["--perms", "0644", "--ro-bind-data", str(fds.add(data)), f"/etc/{name}"]
        for entry in (*HOST_ETC, *sorted(p.name for p in Path("/etc").glob("python3*"))):
            if (Path("/etc") / entry).exists():
                args += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
        args += ["--remount-ro", "/etc"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        for tmp in ("/tmp", "/var/tmp", "/dev/shm"):  # /dev/shm: POSIX semaphores (multiprocessing)
            args += ["--perms", "1777", "--size", str(limits.tmp_mb * MB), "--tmpfs", tmp]
        args += ["--bind" if not tenant.read_only else "--ro-bind", str(tenant.workspace), WORKSPACE]
        env = {"PATH": PATH, "HOME": WORKSPACE, "TMPDIR": "/tmp", "LANG": "C.UTF-8", "USER": "sandbox",
               "LOGNAME": "sandbox", "SHELL": "/bin/sh", "PYTHONUNBUFFERED": "1"}
        if spec.gateway is not None:
            args += ["--perms", "0755", "--dir", RUN_DIR,
                     "--bind", str(spec.gateway.socket), GATEWAY_SOCKET,
                     "--ro-bind", str(spec.gateway.token_file), TOKEN_FILE]
            env |= {"SWITCHBOARD_GATEWAY_SOCKET": GATEWAY_SOCKET, "SWITCHBOARD_GATEWAY_TOKEN_FILE": TOKEN_FILE}
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--remount-ro", "/", "--chdir", WORKSPACE,
                 "--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP",
                 # only for bwrap's chdir into the tenant's 0700 workspace; setpriv drops every capability
                 "--cap-add", "CAP_DAC_READ_SEARCH"]
        if self._seccomp:
            args += ["--seccomp", str(fds.add(self._seccomp))]
        if any("\0" in a for a in args):
            raise ValueError("arguments may not contain NUL characters")
        return b"\0".join(a.encode() for a in args) + b"\0"
