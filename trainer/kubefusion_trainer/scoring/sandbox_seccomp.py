"""A seccomp filter an unprivileged process installs on itself before it runs an untrusted answer.

Stdlib only (sandbox_child.py loads it by path under `python -I -S`). Needs no capability: only
PR_SET_NO_NEW_PRIVS, which any process may set (and which `allowPrivilegeEscalation: false` sets anyway).
It is what keeps an answer running as the scorer's own uid from reaching past its process:
  - no sockets except AF_UNIX: no network even where no NetworkPolicy is enforced, and no io_uring
    (it could open sockets behind seccomp's back);
  - signals only to itself (kill/tgkill/rt_*sigqueueinfo with its own pid, or kill(0) for its group):
    it cannot kill or stop the driver, which has the same uid;
  - no ptrace, process_vm_*, pidfd_*, kcmp: no reading another process's memory or file descriptors;
  - no setsid/setpgid: it stays in the process group the launcher kills;
  - no mount/unshare/setns/bpf/perf_event_open/userfaultfd/keyrings: less kernel surface;
  - when `no_fork`: no new processes at all (fork/vfork, clone without CLONE_THREAD; clone3 answers
    ENOSYS so libc falls back to clone, the one seccomp can inspect). Threads stay allowed; RLIMIT_AS
    bounds how many (each needs a stack).
Syscall tables exist for x86_64 and aarch64; elsewhere `supported()` is False and the caller says so.
"""

import ctypes
import errno
import os
import platform
import struct

# seccomp_data offsets: nr (u32) at 0, arch (u32) at 4, args[i] (u64) at 16 + 8 * i (low word first).
_NR, _ARCH, _ARG0 = 0, 4, 16
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
_RET_ERRNO = 0x00050000
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
AF_UNIX = 1
CLONE_THREAD = 0x00010000
X32_SYSCALL_BIT = 0x40000000

ARCHES = {
    "x86_64": {
        "audit": 0xC000003E,
        "kill": 62,
        "tkill": 200,
        "tgkill": 234,
        "rt_sigqueueinfo": 129,
        "rt_tgsigqueueinfo": 297,
        "socket": 41,
        "clone": 56,
        "fork": 57,
        "vfork": 58,
        "clone3": 435,
        "deny": {
            "ptrace": 101,
            "process_vm_readv": 310,
            "process_vm_writev": 311,
            "pidfd_open": 434,
            "pidfd_send_signal": 424,
            "pidfd_getfd": 438,
            "kcmp": 312,
            "setsid": 112,
            "setpgid": 109,
            "io_uring_setup": 425,
            "mount": 165,
            "unshare": 272,
            "setns": 308,
            "bpf": 321,
            "perf_event_open": 298,
            "userfaultfd": 323,
            "keyctl": 250,
            "add_key": 248,
            "request_key": 249,
        },
    },
    "aarch64": {
        "audit": 0xC00000B7,
        "kill": 129,
        "tkill": 130,
        "tgkill": 131,
        "rt_sigqueueinfo": 138,
        "rt_tgsigqueueinfo": 240,
        "socket": 198,
        "clone": 220,
        "fork": None,  # aarch64 has only clone/clone3
        "vfork": None,
        "clone3": 435,
        "deny": {
            "ptrace": 117,
            "process_vm_readv": 270,
            "process_vm_writev": 271,
            "pidfd_open": 434,
            "pidfd_send_signal": 424,
            "pidfd_getfd": 438,
            "kcmp": 272,
            "setsid": 157,
            "setpgid": 154,
            "io_uring_setup": 425,
            "mount": 40,
            "unshare": 97,
            "setns": 268,
            "bpf": 280,
            "perf_event_open": 241,
            "userfaultfd": 282,
            "keyctl": 219,
            "add_key": 217,
            "request_key": 218,
        },
    },
}


def machine():
    name = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(name, name)


def supported():
    return machine() in ARCHES


def _op(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def _errno(number):
    return _RET_ERRNO | number


def _rule(nr, block):
    """If the syscall is `nr`, run `block` (which always returns); otherwise fall through past it."""
    return [_op(_LD_W_ABS, _NR), _op(_JEQ, nr, 0, len(block)), *block]


def _only_self(pid, also_zero=False):
    """Allow when arg0 (a pid) is ours (or 0: our own process group), else EPERM."""
    block = [_op(_LD_W_ABS, _ARG0), _op(_JEQ, pid & 0xFFFFFFFF, 0, 1), _op(_RET, RET_ALLOW)]
    if also_zero:
        block += [_op(_JEQ, 0, 0, 1), _op(_RET, RET_ALLOW)]
    return [*block, _op(_RET, _errno(errno.EPERM))]


def build_filter(arch, pid, no_fork):
    """The BPF program as (code, jt, jf, k) tuples; pure, so tests can read it."""
    table = ARCHES[arch]
    prog = [
        _op(_LD_W_ABS, _ARCH),
        _op(_JEQ, table["audit"], 1, 0),
        _op(_RET, RET_KILL_PROCESS),  # a foreign ABI would mean other syscall numbers
    ]
    if arch == "x86_64":  # x32 syscalls reach the same kernel code under other numbers
        prog += [_op(_LD_W_ABS, _NR), _op(_JGE, X32_SYSCALL_BIT, 0, 1), _op(_RET, _errno(errno.EPERM))]
    for nr in table["deny"].values():
        prog += _rule(nr, [_op(_RET, _errno(errno.EPERM))])
    prog += _rule(table["kill"], _only_self(pid, also_zero=True))
    for name in ("tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        prog += _rule(table[name], _only_self(pid))
    prog += _rule(table["tkill"], [_op(_RET, _errno(errno.EPERM))])
    unix_only = [
        _op(_LD_W_ABS, _ARG0),
        _op(_JEQ, AF_UNIX, 0, 1),
        _op(_RET, RET_ALLOW),
        _op(_RET, _errno(errno.EACCES)),
    ]
    prog += _rule(table["socket"], unix_only)
    if no_fork:
        for name in ("fork", "vfork"):
            if table[name] is not None:
                prog += _rule(table[name], [_op(_RET, _errno(errno.EAGAIN))])
        prog += _rule(table["clone3"], [_op(_RET, _errno(errno.ENOSYS))])
        threads_only = [
            _op(_LD_W_ABS, _ARG0),
            _op(_JSET, CLONE_THREAD, 0, 1),
            _op(_RET, RET_ALLOW),
            _op(_RET, _errno(errno.EAGAIN)),
        ]
        prog += _rule(table["clone"], threads_only)
    return [*prog, _op(_RET, RET_ALLOW)]


def install(no_fork):
    """Set no_new_privs and load the filter on this process (inherited by its threads and children)."""
    prog = build_filter(machine(), os.getpid(), no_fork)
    blob = b"".join(struct.pack("=HBBI", *ins) for ins in prog)
    buffer = ctypes.create_string_buffer(blob, len(blob))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.addressof(buffer))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP)")
