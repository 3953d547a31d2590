"""The sandbox contract (issue 18's Proof), run against every backend that works here.

Each test runs real commands in a real sandbox and checks what a tenant could do from inside:
reach the network, write the system, see another tenant, read the server's secrets, exhaust
the machine, or keep anything running after its run.
"""

from __future__ import annotations

import os
import platform
import re
import secrets
import socket
import threading
import time
from pathlib import Path

import pytest

from switchboard.sandbox import seccomp
from switchboard.sandbox.base import RunResult
from switchboard.sandbox.manager import SandboxManager
from tests.sandbox.conftest import TEST_LIMITS, processes_of

PLUS = "plus"
A, B = 101, 102  # two tenants


def sh(manager: SandboxManager, script: str, user: int = A, **kwargs: object) -> RunResult:
    return manager.run(user, PLUS, ["/bin/sh", "-c", script], **kwargs)  # type: ignore[arg-type]


def py(manager: SandboxManager, code: str, user: int = A, **kwargs: object) -> RunResult:
    return manager.run(user, PLUS, ["python3", "-c", code], **kwargs)  # type: ignore[arg-type]


CONNECT = """
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
try:
    socket.create_connection((host, port), timeout=3).close()
    print("connected")
except OSError as exc:
    print("refused", type(exc).__name__, exc)
"""


def connect_inside(manager: SandboxManager, host: str, port: int) -> str:
    result = manager.run(A, PLUS, ["python3", "-c", CONNECT, host, str(port)])
    assert result.exit_code == 0, result.stderr
    return result.stdout.decode()


def test_no_network_the_host_can_connect_the_sandbox_cannot(sandbox: SandboxManager) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()  # the host can
        assert connect_inside(sandbox, "127.0.0.1", port).startswith("refused")
    finally:
        listener.close()
    try:  # PostgreSQL on the host, where the test machine runs it
        socket.create_connection(("127.0.0.1", 5432), timeout=3).close()
        host_reaches_postgres = True
    except OSError:
        host_reaches_postgres = False
    assert connect_inside(sandbox, "127.0.0.1", 5432).startswith("refused")
    # An outside address: no route at all from inside (no interface but loopback).
    assert connect_inside(sandbox, "1.1.1.1", 443).startswith("refused")
    assert connect_inside(sandbox, "8.8.8.8", 53).startswith("refused")
    interfaces = sh(sandbox, "cat /proc/net/dev").stdout.decode()
    assert re.findall(r"^\s*(\w+):", interfaces, re.M) == ["lo"]
    if not host_reaches_postgres:
        pytest.skip("PostgreSQL is not running on the host: only the sandbox's side of 127.0.0.1:5432 was checked")


def test_dns_fails(sandbox: SandboxManager) -> None:
    result = py(sandbox, "import socket\ntry:\n socket.getaddrinfo('example.com', 443)\n print('resolved')\n"
                         "except OSError as e:\n print('failed', e)")
    assert result.stdout.startswith(b"failed"), result.stdout + result.stderr


def test_system_is_read_only_and_the_workspace_writable(sandbox: SandboxManager) -> None:
    result = sh(sandbox, "for f in /etc/evil /usr/evil /usr/bin/evil /evil; do touch $f 2>&1; done; "
                         "echo hello > /workspace/notes.txt && cat /workspace/notes.txt; echo tmp > /tmp/t && cat /tmp/t; pwd")
    out = result.stdout.decode()
    assert out.count("Read-only file system") == 4, out
    assert "hello\ntmp\n/workspace\n" in out
    # The file persists in the user's workspace, owned by their uid.
    workspace = sandbox.workspace(A, PLUS)
    data, _ = workspace.read("notes.txt", 100)
    assert data == b"hello\n"
    assert os.stat(workspace.path / "notes.txt").st_uid == sandbox.uid(A)
    assert sh(sandbox, "cat notes.txt").stdout == b"hello\n"  # next run, same workspace


def test_tenants_cannot_see_each_others_files_or_processes(sandbox: SandboxManager) -> None:
    marker = "marker" + secrets.token_hex(4)
    sh(sandbox, f"echo secret-of-a > /workspace/{marker}.txt")
    a_path = sandbox.workspace(A, PLUS).path
    running = threading.Thread(target=sh, args=(sandbox, f"sleep 4 # {marker}"))
    running.start()
    try:
        time.sleep(1.0)
        # B is told where A's files are (on stdin: B's own command line then holds no marker).
        result = sh(sandbox, 'read apath; read marker; ls -A /workspace; echo ---; ls "$apath" 2>&1; '
                             'cat "$apath/$marker.txt" 2>&1; cat "/workspace/../$apath/$marker.txt" 2>&1; echo ---; '
                             "ps -eo user,args; echo end", user=B, stdin=f"{a_path}\n{marker}\n".encode())
    finally:
        running.join()
    own, denied, processes = result.stdout.decode().split("---\n")
    assert own == ""  # B's workspace is B's alone: empty
    assert "secret-of-a" not in result.stdout.decode()
    assert denied.count("No such file or directory") == 3, denied
    assert "sleep" not in processes and marker not in processes, processes
    assert processes.rstrip().endswith("end")
    assert sandbox.uid(A) != sandbox.uid(B)


def test_server_secrets_are_not_visible_inside(sandbox: SandboxManager, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sb-secret-" + secrets.token_hex(16)
    monkeypatch.setenv("SWITCHBOARD_TEST_SECRET", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    result = sh(sandbox, "env; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; "
                         "grep -rs " + secret[:12] + " /proc/*/environ /workspace /tmp /etc; echo done")
    assert secret.encode() not in result.stdout + result.stderr
    assert secret[:12].encode() not in result.stdout.replace(f"grep -rs {secret[:12]}".encode(), b"")
    env = dict(line.split("=", 1) for line in sh(sandbox, "env").stdout.decode().splitlines() if "=" in line)
    assert "OPENAI_API_KEY" not in env and "SWITCHBOARD_TEST_SECRET" not in env
    ours = {"PATH", "HOME", "TMPDIR", "LANG", "USER", "LOGNAME", "SHELL", "PYTHONUNBUFFERED", "PWD", "SHLVL", "_"}
    assert not (set(env) - ours) & set(os.environ), "a variable of the server's environment leaked in"
    if sandbox.backend.name == "bubblewrap":
        assert set(env) <= ours  # nothing at all but what the sandbox sets (an image may add its own)


def test_fork_bomb_stops_at_the_process_limit_and_leaves_nothing(sandbox: SandboxManager) -> None:
    started = time.monotonic()
    result = sh(sandbox, "bomb() { bomb | bomb & }; bomb; sleep 2; echo survived")
    assert time.monotonic() - started < TEST_LIMITS["time_s"] + 5
    assert re.search(rb"(Cannot fork|Resource temporarily unavailable)", result.stderr), result.stderr[:500]
    time.sleep(0.2)
    assert processes_of(sandbox.uid(A)) == []  # type: ignore[arg-type]
    assert sh(sandbox, "echo alive").stdout == b"alive\n"  # the tenant's next run is fine


def test_endless_loop_is_killed_at_its_time_limit_and_charged_at_most_the_limit(sandbox: SandboxManager) -> None:
    result = py(sandbox, "while True: pass", time_s=2)
    assert result.timed_out and result.status == 124
    assert 2.0 <= result.wall_s < 4.0
    limits = sandbox.limits(PLUS)
    assert 0 < result.cpu_s and min(result.cpu_s, limits.cpus * 2) <= limits.cpus * 2
    time.sleep(0.2)
    assert processes_of(sandbox.uid(A)) == []  # type: ignore[arg-type]
    # A loop with children in the background: the whole run goes at the limit.
    result = sh(sandbox, "sleep 100 & sleep 100 & python3 -c 'while True: pass'", time_s=1)
    assert result.timed_out
    time.sleep(0.2)
    assert processes_of(sandbox.uid(A)) == []  # type: ignore[arg-type]


def test_memory_far_past_the_limit_fails_and_says_so(sandbox: SandboxManager) -> None:
    result = py(sandbox, "b = bytearray(1024 * 1024 * 1024); b[::4096] = b'x' * (len(b) // 4096); print('allocated')")
    assert b"allocated" not in result.stdout
    assert result.killed_for_memory or b"MemoryError" in result.stderr, (result, result.stderr)
    if result.killed_for_memory:
        assert result.status == 137


def test_huge_output_is_truncated_without_the_server_growing(sandbox: SandboxManager) -> None:
    def rss_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    baseline, peak, done = rss_kb(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_kb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        result = sh(sandbox, "head -c 100000000 /dev/zero | tr '\\0' x; head -c 50000000 /dev/zero >&2; echo end")
    finally:
        done.set()
        sampler.join()
    cap = TEST_LIMITS["output_kb"] * 1024
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout) == cap and result.stdout == b"x" * cap and len(result.stderr) == cap
    assert result.exit_code == 0
    assert peak[0] - baseline < 30_000, f"the server grew by {peak[0] - baseline} KB"


def test_a_huge_file_stops_at_the_size_limit(sandbox: SandboxManager) -> None:
    result = sh(sandbox, "head -c 100000000 /dev/zero > /workspace/big; echo status=$?; ls -l /workspace/big")
    assert b"File too large" in result.stderr or b"status=1" in result.stdout or b"status=153" in result.stdout
    assert os.path.getsize(sandbox.workspace(A, PLUS).path / "big") == TEST_LIMITS["file_size_mb"] * 1024 * 1024


def test_no_root_no_capabilities_no_new_privileges(sandbox: SandboxManager) -> None:
    result = sh(sandbox, "id -u; grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status")
    lines = result.stdout.decode().split("\n")
    assert int(lines[0]) != 0 and int(lines[0]) == sandbox.uid(A)
    status = dict(line.split(":\t") for line in lines[1:] if line)
    assert all(int(status[k], 16) == 0 for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")), status
    assert status["NoNewPrivs"] == "1"
    if sandbox.backend.name == "bubblewrap":
        assert "Seccomp:\t2" in sh(sandbox, "cat /proc/self/status").stdout.decode()  # the filter is on
        if platform.machine() in seccomp.ARCHES:
            column = list(seccomp.ARCHES).index(platform.machine())
            numbers = [seccomp.DENIED[name][column] for name in ("keyctl", "bpf", "io_uring_setup", "ptrace", "unshare")]
            code = ("import ctypes, sys\nlibc = ctypes.CDLL(None, use_errno=True)\nfor nr in map(int, sys.argv[1:]):\n"
                    "    print(libc.syscall(nr, 0, 0, 0, 0, 0), ctypes.get_errno())")
            probe = sandbox.run(A, PLUS, ["python3", "-c", code, *map(str, numbers)])
            assert probe.stdout.decode().split("\n")[:-1] == ["-1 1"] * len(numbers), probe.stdout + probe.stderr
    # And nothing to escalate with: no new user namespace, no setuid binary gains anything.
    escalate = sh(sandbox, "unshare -U -r id -u 2>&1; echo rc=$?; su -c id root </dev/null 2>&1; echo rc=$?")
    out = escalate.stdout.decode()
    assert "rc=0" not in out, out


def test_python_and_the_usual_utilities_work_inside(sandbox: SandboxManager) -> None:
    code = ("import threading, subprocess, multiprocessing, sqlite3, json\n"
            "t = threading.Thread(target=print, args=('thread',)); t.start(); t.join()\n"
            "print(subprocess.run(['echo', 'child'], capture_output=True, text=True).stdout.strip())\n"
            "with multiprocessing.Pool(2) as pool: print(sum(pool.map(abs, [-1, -2])))\n"
            "print(sqlite3.connect(':memory:').execute('select 6 * 7').fetchone()[0])")
    result = py(sandbox, code)
    assert result.stdout == b"thread\nchild\n3\n42\n", result.stderr
    tools = sh(sandbox, "printf 'b\\na\\n' | sort | tr a-z A-Z; awk 'BEGIN { print 2 + 2 }'; echo x | sed s/x/y/; "
                        "mkdir -p d/e && tar czf d.tgz d && ls d.tgz")
    assert tools.stdout == b"A\nB\n4\ny\nd.tgz\n", tools.stderr
