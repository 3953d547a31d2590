"""Running one child process with a deadline, its output capped, and its CPU time measured.

One thread does everything with a selector (stdin in, stdout and stderr out, the deadline, a
periodic check), so that a run never needs asyncio's child watcher and works the same from the
server's event loop (on a worker thread) and from the operator's CLI. Output beyond the cap is
read and dropped as it arrives, so 100 MB of output costs the server a 64 KiB buffer per stream,
not 100 MB; the child is never blocked on a full pipe.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from switchboard.sandbox.base import RunResult

READ_CHUNK = 65_536
DRAIN_GRACE_S = 2.0  # after a kill (or the main process's exit), how long leftover output is read


@dataclass(slots=True)
class Capped:
    """The first `cap` bytes of a stream; whether anything was dropped."""

    cap: int
    data: bytearray
    truncated: bool = False

    def add(self, chunk: bytes) -> None:
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]
        if len(chunk) > room:
            self.truncated = True


@dataclass(slots=True)
class Outcome:
    exit_code: int  # the exit status, or 128 + N when signal N ended the process
    stdout: Capped
    stderr: Capped
    timed_out: bool
    stopped: str | None  # why a check stopped the run early (e.g. "quota"), if one did
    cpu_s: float  # the child's CPU time and that of the descendants it waited for (rusage)
    wall_s: float


def result(outcome: Outcome, **extra: Any) -> RunResult:
    """A backend's RunResult from what the process did; `extra` overrides (CPU, memory...)."""
    fields: dict[str, Any] = {
        "exit_code": outcome.exit_code, "stdout": bytes(outcome.stdout.data), "stderr": bytes(outcome.stderr.data),
        "stdout_truncated": outcome.stdout.truncated, "stderr_truncated": outcome.stderr.truncated,
        "timed_out": outcome.timed_out, "quota_exceeded": outcome.stopped == "quota", "cpu_s": outcome.cpu_s,
        "wall_s": outcome.wall_s,
    }
    return RunResult(**(fields | extra))


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the child's process group (it leads its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(
    argv: Sequence[str],
    *,
    stdin: bytes,
    timeout_s: float,
    cap_bytes: int,
    env: dict[str, str],
    pass_fds: Sequence[int] = (),
    cwd: str | None = None,
    kill: Callable[[subprocess.Popen[bytes]], None] = kill_group,
    check: Callable[[], str | None] | None = None,
    check_every_s: float = 0.5,
    on_output: Callable[[str, bytes], None] | None = None,
) -> Outcome:
    """Run `argv` in a new session; kill it (with `kill`) at `timeout_s` or when `check` names
    a reason to stop. Returns once the child has been reaped."""
    started = time.monotonic()
    proc = subprocess.Popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd,
        pass_fds=tuple(pass_fds), close_fds=True, start_new_session=True,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = Capped(cap_bytes, bytearray()), Capped(cap_bytes, bytearray())
    streams = {proc.stdout.fileno(): ("stdout", out), proc.stderr.fileno(): ("stderr", err)}
    pending = memoryview(stdin)
    selector = selectors.DefaultSelector()
    for fd in streams:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    stdin_fd = proc.stdin.fileno()
    if pending:
        os.set_blocking(stdin_fd, False)
        selector.register(stdin_fd, selectors.EVENT_WRITE)
    else:
        proc.stdin.close()
    deadline = started + timeout_s
    next_check = started + check_every_s
    timed_out, stopped, killed_at = False, None, None
    try:
        while selector.get_map():
            now = time.monotonic()
            if killed_at is None:
                if now >= deadline:
                    timed_out = True
                elif check is not None and now >= next_check:
                    stopped = check()
                    next_check = now + check_every_s
                elif _exited(proc.pid):
                    # The main process is gone; anything it left behind holding the pipes
                    # (a background job) goes with its group.
                    killed_at = now
                    kill(proc)
                if timed_out or stopped:
                    killed_at = now
                    kill(proc)
            elif now - killed_at > DRAIN_GRACE_S:
                break
            wake = min(deadline, next_check) if killed_at is None else killed_at + DRAIN_GRACE_S
            for key, _ in selector.select(timeout=max(0.0, min(wake - now, 0.1))):
                fd = int(key.fd)  # type: ignore[arg-type]
                if fd == stdin_fd:
                    try:
                        sent = os.write(fd, pending[:READ_CHUNK])
                        pending = pending[sent:]
                    except BlockingIOError:
                        continue
                    except OSError as exc:  # the child closed its stdin (EPIPE): it wants no more
                        if exc.errno not in (errno.EPIPE, errno.EBADF):
                            raise
                        pending = pending[:0]
                    if not pending:
                        selector.unregister(fd)
                        proc.stdin.close()
                    continue
                try:
                    chunk = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                if not chunk:
                    selector.unregister(fd)
                    continue
                name, capped = streams[fd]
                capped.add(chunk)
                if on_output is not None:
                    on_output(name, chunk)
    finally:
        selector.close()
        if killed_at is None and not _exited(proc.pid):
            kill(proc)  # an exception above: never leave the child running
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if not pipe.closed:
                pipe.close()
    status, cpu_s = _reap(proc)
    return Outcome(status, out, err, timed_out, stopped, cpu_s, time.monotonic() - started)


def _exited(pid: int) -> bool:
    """Whether the child has exited, without reaping it (its rusage is read when it is)."""
    try:
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def _reap(proc: subprocess.Popen[bytes]) -> tuple[int, float]:
    """Wait for the child with wait4, for its resource usage (Popen.wait gives none)."""
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:
            return 255, 0.0
    proc.returncode = exit_code(status)  # so that Popen does not try to reap it again
    return exit_code(status), usage.ru_utime + usage.ru_stime
