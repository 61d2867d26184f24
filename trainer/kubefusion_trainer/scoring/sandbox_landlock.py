"""Landlock: an unprivileged process confines its own file access (and, on newer kernels, TCP and signals).

Stdlib only (loaded by path from sandbox_child.py). Landlock needs no capability, only no_new_privs. The
answer may then read the interpreter and system libraries, read and write its scratch directory, and
nothing else: not /proc (no other process's environ), not the run's files, not the inputs of other
answers, no file outside the scratch dir. ABI 4+ also refuses every TCP bind/connect; ABI 6+ scopes
signals and abstract unix sockets to the answer's own domain (the driver is outside it).
Kernels without Landlock (or a seccomp profile that blocks its syscalls) make `abi()` return 0; the
caller then reports that file access is not confined beyond what the pod's read-only root gives.
"""

import ctypes
import os
import struct
import sys

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446  # same on x86_64 and aarch64
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1
PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1, 2, 4, 8
READ_ONLY = EXECUTE | READ_FILE | READ_DIR
# Every filesystem right each ABI version knows (v1: 13 rights; v2 REFER; v3 TRUNCATE; v5 IOCTL_DEV).
_FS_RIGHTS = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
NET_BIND_TCP, NET_CONNECT_TCP = 1, 2
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1, 2

SYSTEM_READ = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc/ld.so.cache", "/etc/localtime")
DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom", "/dev/random")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def abi():
    """The kernel's Landlock ABI version, 0 when unavailable."""
    version = _libc.syscall(
        SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION)
    )
    return max(int(version), 0)


def read_paths():
    """What an answer's interpreter needs to read: system libraries and this Python's own tree."""
    paths = set(SYSTEM_READ)
    for prefix in (sys.base_prefix, sys.prefix, sys.base_exec_prefix):
        paths.add(prefix)
    paths.add(os.path.dirname(os.path.realpath(sys.executable)))
    return sorted(paths)


def _fs_rights(version):
    return _FS_RIGHTS[min(version, 5)]


def restrict(scratch, version):
    """Confine this thread (and what it starts) to reading system paths and using `scratch`."""
    handled_fs = _fs_rights(version)
    fields = [handled_fs]
    if version >= 4:
        fields.append(NET_BIND_TCP | NET_CONNECT_TCP)  # handled with no rule: no TCP at all
    if version >= 6:
        fields.append(SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    attr = struct.pack(f"={len(fields)}Q", *fields)
    ruleset = _libc.syscall(SYS_CREATE_RULESET, attr, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        rules = [(p, READ_ONLY) for p in read_paths()] + [(p, READ_ONLY | WRITE_FILE) for p in DEVICES]
        rules.append((scratch, handled_fs))
        for path, access in rules:
            _allow(ruleset, path, access & handled_fs)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
        if _libc.syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _allow(ruleset, path, access):
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return  # not on this system (e.g. no /lib32)
    try:
        if not os.path.isdir(path):
            access &= EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | (1 << 15)  # file-only rights
        rule = struct.pack("=Qi", access, fd)
        if _libc.syscall(
            SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH), rule, ctypes.c_uint32(0)
        ):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule {path}")
    finally:
        os.close(fd)
