"""A seccomp filter for bubblewrap runs (`bwrap --seccomp FD`), built here as classic BPF.

Capabilities are already gone inside the sandbox; this removes the kernel interfaces an
unprivileged process can still reach and a code runner never needs, the usual routes of
container escapes: new user namespaces (clone/unshare with namespace flags), keyrings, bpf,
perf events, userfaultfd, io_uring, ptrace, mounts, module and kexec calls, handles by inode.
Refused calls fail with EPERM (clone3 with ENOSYS, so that libc falls back to clone, whose
flags a classic filter can read). Any other architecture or ABI (i386 or x32 calls on x86-64)
kills the process. The same deny-list as Docker's default profile, shortened to what matters
without capabilities.
"""

from __future__ import annotations

import errno
import platform
import struct

# BPF instruction classes and fields (linux/filter.h, linux/bpf_common.h).
LD_W_ABS = 0x20
JEQ_K = 0x15
JGE_K = 0x35
JSET_K = 0x45
RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
# struct seccomp_data: int nr; __u32 arch; __u64 instruction_pointer; __u64 args[6].
NR, ARCH, ARG0_LOW = 0, 4, 16  # little-endian: the low half of args[0] comes first
X32_BIT = 0x40000000
NAMESPACE_FLAGS = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET

ARCHES = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# name: (x86_64, aarch64)
DENIED: dict[str, tuple[int, int]] = {
    "unshare": (272, 97), "setns": (308, 268), "mount": (165, 40), "umount2": (166, 39),
    "pivot_root": (155, 41), "chroot": (161, 51), "keyctl": (250, 219), "add_key": (248, 217),
    "request_key": (249, 218), "bpf": (321, 280), "perf_event_open": (298, 241),
    "userfaultfd": (323, 282), "io_uring_setup": (425, 425), "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427), "ptrace": (101, 117), "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271), "kexec_load": (246, 104), "kexec_file_load": (320, 294),
    "init_module": (175, 105), "finit_module": (313, 273), "delete_module": (176, 106),
    "open_by_handle_at": (304, 265), "name_to_handle_at": (303, 264), "open_tree": (428, 428),
    "move_mount": (429, 429), "fsopen": (430, 430), "fsconfig": (431, 431), "fsmount": (432, 432),
    "fspick": (433, 433), "mount_setattr": (442, 442), "quotactl": (179, 60), "swapon": (167, 224),
    "swapoff": (168, 225), "reboot": (169, 142), "acct": (163, 89), "syslog": (103, 116),
    "settimeofday": (164, 170), "clock_settime": (227, 112), "clock_adjtime": (305, 266),
    "adjtimex": (159, 171), "vhangup": (153, 58), "lookup_dcookie": (212, 18),
}
CLONE = {"x86_64": 56, "aarch64": 220}
CLONE3 = 435


def supported(machine: str | None = None) -> bool:
    return (machine or platform.machine()) in ARCHES


def program(machine: str | None = None) -> bytes:
    """The filter as `struct sock_filter[]` bytes for this machine's architecture."""
    machine = machine or platform.machine()
    if machine not in ARCHES:
        raise ValueError(f"no seccomp filter for {machine}; supported: {', '.join(ARCHES)}")
    column = list(ARCHES).index(machine)
    # (code, jump-if-true label, jump-if-false label, k); labels are resolved below.
    insns: list[tuple[int, str | None, str | None, int]] = [
        (LD_W_ABS, None, None, ARCH),
        (JEQ_K, "load_nr", "kill", ARCHES[machine]),
    ]
    body: list[tuple[str, tuple[int, str | None, str | None, int]]] = [("load_nr", (LD_W_ABS, None, None, NR))]
    if machine == "x86_64":
        body.append(("", (JGE_K, "enosys", None, X32_BIT)))
    for numbers in DENIED.values():
        body.append(("", (JEQ_K, "eperm", None, numbers[column])))
    body += [
        ("", (JEQ_K, "clone", None, CLONE[machine])),
        ("", (JEQ_K, "enosys", None, CLONE3)),
        ("", (RET_K, None, None, RET_ALLOW)),
        ("clone", (LD_W_ABS, None, None, ARG0_LOW)),
        ("", (JSET_K, "eperm", None, NAMESPACE_FLAGS)),
        ("", (RET_K, None, None, RET_ALLOW)),
        ("eperm", (RET_K, None, None, RET_ERRNO | errno.EPERM)),
        ("enosys", (RET_K, None, None, RET_ERRNO | errno.ENOSYS)),
        ("kill", (RET_K, None, None, RET_KILL_PROCESS)),
    ]
    labelled = [("", insn) for insn in insns] + body
    where = {label: i for i, (label, _) in enumerate(labelled) if label}

    def offset(i: int, label: str | None) -> int:
        if label is None:
            return 0
        jump = where[label] - i - 1
        assert 0 <= jump <= 255, "a BPF jump goes forward at most 255 instructions"
        return jump

    return b"".join(
        struct.pack("<HBBI", code, offset(i, jt), offset(i, jf), k)
        for i, (_, (code, jt, jf, k)) in enumerate(labelled)
    )
