"""Control groups for sandbox runs, where this process may create them (cgroup v1 or v2).

Each run gets its own group under the server's own (`.../switchboard-sandbox/<run>`): memory
(RAM and swap together), pids and a CPU quota, plus exact CPU accounting and the OOM killer's
count, which rlimits cannot give. The launcher writes its own pid into the groups before it
execs the sandbox, so that every process of the run is inside from its first instruction.
Where no group is writable (an unprivileged container, v2 without delegation), runs rely on
rlimits alone and `describe()` says so: never silently.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.core.config import SandboxLimits

log = logging.getLogger(__name__)
PARENT = "switchboard-sandbox"
V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
V2_CONTROLLERS = ("memory", "pids", "cpu")
CFS_PERIOD_US = 100_000


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _keyed(text: str, key: str) -> int:
    """The value of `key N` in a flat keyed file (memory.events, cpu.stat, memory.oom_control)."""
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _own_groups() -> dict[str, str]:
    """controller (or "" for v2) -> this process's group path, from /proc/self/cgroup."""
    groups: dict[str, str] = {}
    for line in _read(Path("/proc/self/cgroup")).splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            groups[controller] = path
    return groups


def _mounts() -> dict[str, tuple[str, str]]:
    """controller (or "" for v2) -> (mount point, root of the mount), from mountinfo."""
    found: dict[str, tuple[str, str]] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        left, _, right = line.partition(" - ")
        fields, extra = left.split(), right.split()
        if len(fields) < 5 or len(extra) < 3:
            continue
        root, point, fstype, options = fields[3], fields[4], extra[0], extra[2].split(",")
        if fstype == "cgroup2":
            found.setdefault("", (point, root))
        elif fstype == "cgroup":
            for controller in V1_CONTROLLERS:
                if controller in options:
                    found.setdefault(controller, (point, root))
    return found


def _own_dir(mount: tuple[str, str], group: str) -> Path:
    point, root = mount
    rel = os.path.relpath(group, root) if group.startswith(root) else group.lstrip("/")
    return Path(point) / ("" if rel == "." else rel)


@dataclass(slots=True)
class RunGroup:
    """The groups of one run: one directory per v1 controller, or one v2 directory."""

    dirs: dict[str, Path]  # controller -> the run's directory (v2: every controller -> the same one)
    version: int
    _cpu_start_ns: int = 0

    @property
    def procs_files(self) -> list[Path]:
        return sorted({d / "cgroup.procs" for d in self.dirs.values()})

    def cpu_s(self) -> float | None:
        if self.version == 2 and "cpu" in self.dirs:
            return _keyed(_read(self.dirs["cpu"] / "cpu.stat"), "usage_usec") / 1e6
        if "cpuacct" in self.dirs:
            text = _read(self.dirs["cpuacct"] / "cpuacct.usage").strip()
            return int(text) / 1e9 if text.isdigit() else None
        return None

    def oom_kills(self) -> int:
        memory = self.dirs.get("memory")
        if memory is None:
            return 0
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        return _keyed(_read(memory / name), "oom_kill")

    def pids(self) -> list[int]:
        found: set[int] = set()
        for procs in self.procs_files:
            found.update(int(p) for p in _read(procs).split() if p.isdigit())
        return sorted(found)

    def kill_all(self) -> None:
        """SIGKILL every process of the run, including any that forked meanwhile."""
        if self.version == 2 and self.dirs:
            try:  # cgroup.kill (Linux 5.14+): the kernel kills the whole group at once
                _write(next(iter(self.dirs.values())) / "cgroup.kill", "1")
            except OSError:
                pass
        for _ in range(100):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.01)

    def remove(self) -> None:
        for path in sorted(set(self.dirs.values()), reverse=True):
            for _ in range(50):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:  # processes still exiting
                    time.sleep(0.02)
            else:
                log.warning("could not remove the cgroup %s; it is removed at the next start", path)


@dataclass(slots=True)
class Cgroups:
    """Where this process can make groups for runs, and with which controllers."""

    version: int | None = None
    parents: dict[str, Path] = field(default_factory=dict)  # controller -> .../switchboard-sandbox
    why_not: str = ""

    @property
    def controllers(self) -> list[str]:
        return sorted(self.parents)

    @classmethod
    def detect(cls) -> "Cgroups":
        own, mounts = _own_groups(), _mounts()
        v1 = [c for c in V1_CONTROLLERS if c in own and c in mounts]
        if v1:
            return cls._detect_v1(own, mounts, v1)
        if "" in own and "" in mounts:
            return cls._detect_v2(_own_dir(mounts[""], own[""]))
        return cls(why_not="no cgroup hierarchy is mounted")

    @classmethod
    def _detect_v1(cls, own: dict[str, str], mounts: dict[str, tuple[str, str]], controllers: list[str]) -> "Cgroups":
        parents: dict[str, Path] = {}
        problems: list[str] = []
        for controller in controllers:
            parent = _own_dir(mounts[controller], own[controller]) / PARENT
            try:
                parent.mkdir(exist_ok=True)
                _remove_leftovers(parent)
                probe = parent / f"probe-{os.getpid()}"
                probe.mkdir(exist_ok=True)
                probe.rmdir()
                parents[controller] = parent
            except OSError as exc:
                problems.append(f"{controller}: {exc.strerror}")
        return cls(1 if parents else None, parents, "; ".join(problems))

    @classmethod
    def _detect_v2(cls, own_dir: Path) -> "Cgroups":
        parent = own_dir / PARENT
        try:
            available = _read(own_dir / "cgroup.controllers").split()
            wanted = [c for c in V2_CONTROLLERS if c in available]
            if not wanted:
                return cls(why_not="cgroup v2 without the memory, pids or cpu controller here")
            parent.mkdir(exist_ok=True)
            _remove_leftovers(parent)
            # Only a group without processes may give controllers to its children.
            _write(own_dir / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
        except OSError as exc:
            return cls(why_not=f"cgroup v2 at {own_dir} is not delegated to this process ({exc.strerror})")
        return cls(2, {c: parent for c in wanted})

    def create(self, name: str, limits: SandboxLimits) -> RunGroup | None:
        """The groups of one run with its limits set, or None where there are none."""
        if self.version is None:
            return None
        dirs: dict[str, Path] = {}
        try:
            for controller, parent in self.parents.items():
                path = parent / name
                path.mkdir(exist_ok=True)
                dirs[controller] = path
            group = RunGroup(dirs, self.version)
            _set_limits(group, limits)
            return group
        except OSError as exc:
            log.warning("could not create the sandbox cgroup %s: %s", name, exc)
            RunGroup(dirs, self.version).remove()
            return None


def _set_limits(group: RunGroup, limits: SandboxLimits) -> None:
    memory = limits.memory_mb * 1024 * 1024
    quota = max(1000, int(limits.cpus * CFS_PERIOD_US))
    d = group.dirs
    if group.version == 2:
        if "memory" in d:
            _write(d["memory"] / "memory.max", str(memory))
            if (d["memory"] / "memory.swap.max").exists():
                _write(d["memory"] / "memory.swap.max", "0")
        if "pids" in d:
            _write(d["pids"] / "pids.max", str(limits.processes))
        if "cpu" in d:
            _write(d["cpu"] / "cpu.max", f"{quota} {CFS_PERIOD_US}")
        return
    if "memory" in d:
        _write(d["memory"] / "memory.limit_in_bytes", str(memory))
        if (d["memory"] / "memory.memsw.limit_in_bytes").exists():  # swap accounting: RAM + swap together
            _write(d["memory"] / "memory.memsw.limit_in_bytes", str(memory))
    if "pids" in d:
        _write(d["pids"] / "pids.max", str(limits.processes))
    if "cpu" in d:
        _write(d["cpu"] / "cpu.cfs_period_us", str(CFS_PERIOD_US))
        _write(d["cpu"] / "cpu.cfs_quota_us", str(quota))


def _remove_leftovers(parent: Path) -> None:
    """Empty run groups left by a process that died (its pid is in their name: u<user>-<pid>-<n>):
    removed. Those of live processes are left alone, even empty: their run may be starting."""
    for child in parent.iterdir():
        parts = child.name.split("-")
        if not child.is_dir() or (len(parts) == 3 and parts[1].isdigit() and Path(f"/proc/{parts[1]}").exists()):
            continue
        try:
            child.rmdir()
        except OSError:
            pass
