"""sdcd's default seccomp profile (OCI ``linux.seccomp``), written for sdcd.

An allow-list: every syscall an ordinary program needs is allowed, everything else fails
with EPERM. Left out on purpose: anything that needs a capability containers never get
(mount and the new mount API, module loading, kexec, reboot, swap, clock setting,
quotas, accounting, ioperm/iopl, syslog, sethostname), the kernel keyring, bpf and
perf_event_open, io_uring, userfaultfd, setns and namespace creation (clone/unshare
with namespace flags), open_by_handle_at/name_to_handle_at, and obsolete syscalls.

``clone3`` answers ENOSYS rather than EPERM: its flags live in memory seccomp cannot
inspect, so it is refused as "not implemented" and libc falls back to ``clone``, whose
flags are checked. ``ptrace`` (and the syscalls that share its permission check) is
allowed from kernel 4.8 on, where it can no longer be used to bypass seccomp.
"""

from __future__ import annotations

import platform

EPERM = 1
ENOSYS = 38
AF_VSOCK = 40

#: CLONE_NEWNS|CLONE_NEWCGROUP|CLONE_NEWUTS|CLONE_NEWIPC|CLONE_NEWUSER|CLONE_NEWPID|CLONE_NEWNET
CLONE_NAMESPACE_FLAGS = 0x7E020000
#: The same plus CLONE_NEWTIME, which unshare takes (in clone that bit is the exit signal).
UNSHARE_NAMESPACE_FLAGS = CLONE_NAMESPACE_FLAGS | 0x80

#: Execution domains allowed for personality(): Linux, Linux32, UNAME26, both, query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

#: libseccomp architectures per machine: the native one plus its compat ABIs.
ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "arm64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}

_FILES = """
access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2 dup3
faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock
fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futimesat getcwd getdents getdents64 getxattr inotify_add_watch inotify_init
inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents
io_pgetevents_time64 io_setup io_submit ioctl lchown lchown32 lgetxattr link linkat
listxattr llistxattr _llseek lremovexattr lseek lsetxattr lstat lstat64 mkdir mkdirat
mknod mknodat newfstatat oldfstat oldlstat oldstat open openat openat2 pipe pipe2 pread64
preadv preadv2 pwrite64 pwritev pwritev2 read readahead readdir readlink readlinkat readv
removexattr rename renameat renameat2 rmdir sendfile sendfile64 setxattr splice stat
stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range syncfs tee truncate
truncate64 umask unlink unlinkat ustat utime utimensat utimensat_time64 utimes vmsplice
write writev cachestat
"""

_EVENTS = """
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 poll ppoll ppoll_time64 pselect6 pselect6_time64 select
_newselect signalfd signalfd4 timerfd_create timerfd_gettime timerfd_gettime64
timerfd_settime timerfd_settime64
"""

_MEMORY = """
brk get_mempolicy madvise map_shadow_stack mbind membarrier memfd_create mincore mlock
mlock2 mlockall mmap mmap2 mprotect mremap mseal msync munlock munlockall munmap pkey_alloc
pkey_free pkey_mprotect remap_file_pages set_mempolicy set_mempolicy_home_node
"""

_PROCESS = """
arch_prctl capget capset chroot execve execveat exit exit_group fork getcpu getegid
getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getpgid getpgrp getpid
getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
get_robust_list getrusage getsid get_thread_area gettid getuid getuid32 ioprio_get
ioprio_set kill landlock_add_rule landlock_create_ruleset landlock_restrict_self
modify_ldt pidfd_open pidfd_send_signal prctl prlimit64 process_madvise process_mrelease
rseq sched_getaffinity sched_getattr sched_getparam sched_get_priority_max
sched_get_priority_min sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam
sched_setscheduler sched_yield setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32
setgroups setgroups32 setpgid setpriority setregid setregid32 setresgid setresgid32
setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list setsid
set_thread_area set_tid_address setuid setuid32 tgkill tkill ugetrlimit uname vfork wait4
waitid waitpid
"""

_TIME_AND_SIGNALS = """
adjtimex alarm clock_getres clock_getres_time64 clock_gettime clock_gettime64
clock_nanosleep clock_nanosleep_time64 futex futex_requeue futex_time64 futex_wait
futex_waitv futex_wake getitimer gettimeofday nanosleep pause restart_syscall
rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo setitimer sigaction sigaltstack
signal sigpending sigprocmask sigreturn sigsuspend sysinfo time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 times
"""

_IPC = """
ipc mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd semctl semget semop semtimedop
semtimedop_time64 shmat shmctl shmdt shmget
"""

_NETWORK = """
accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom
recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown
socketcall socketpair
"""

#: 32-bit ARM's private syscalls, only listed on ARM machines.
_ARM = "arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls sync_file_range2"

#: Syscalls behind ptrace's permission check: safe from kernel 4.8 on.
PTRACE_SYSCALLS = ["kcmp", "pidfd_getfd", "process_vm_readv", "process_vm_writev", "ptrace"]

_DENIED = """
acct add_key bpf clock_adjtime clock_adjtime64 clock_settime clock_settime64
create_module delete_module finit_module fanotify_init fsconfig fsmount fsopen fspick
get_kernel_syms init_module io_uring_enter io_uring_register io_uring_setup ioperm iopl
kexec_file_load kexec_load keyctl lookup_dcookie mount mount_setattr move_mount
move_pages name_to_handle_at nfsservctl open_by_handle_at open_tree pivot_root
query_module quotactl quotactl_fd reboot request_key setdomainname sethostname setns
settimeofday stime swapoff swapon _sysctl syslog umount umount2 uselib userfaultfd
vhangup vm86 vm86old
"""
#: Never allowed (documentation and tests: none of these may be in the allow-list).
DENIED = frozenset(_DENIED.split())


def allowed_syscalls(machine: str | None = None, kernel: str | None = None) -> list[str]:
    """The unconditionally allowed syscalls for this machine and kernel, sorted."""
    machine = machine or platform.machine()
    names = set()
    for group in (_FILES, _EVENTS, _MEMORY, _PROCESS, _TIME_AND_SIGNALS, _IPC, _NETWORK):
        names.update(group.split())
    if machine in ("aarch64", "arm64", "armv7l"):
        names.update(_ARM.split())
    if _kernel_at_least(kernel or platform.release(), (4, 8)):
        names.update(PTRACE_SYSCALLS)
    return sorted(names - DENIED)


def _kernel_at_least(release: str, wanted: tuple[int, int]) -> bool:
    numbers = []
    for part in release.split("-")[0].split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit()) if part else ""
        numbers.append(int(digits) if digits else 0)
    return tuple(numbers) >= wanted


def _rule(names: list[str], args: list[dict] | None = None, **extra: object) -> dict:
    rule: dict = {"names": names, "action": "SCMP_ACT_ALLOW"}
    if args:
        rule["args"] = args
    rule.update(extra)
    return rule


def _arg(index: int, op: str, value: int, value_two: int = 0) -> dict:
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _conditional_rules(machine: str) -> list[dict]:
    """Syscalls allowed only with harmless arguments."""
    clone_flags = 1 if machine.startswith("s390") else 0  # s390 swaps clone's first two
    rules = [
        # clone without namespace flags.
        _rule(["clone"], [_arg(clone_flags, "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS)]),
        # unshare of the file table/fs info/SysV undo list, never of a namespace.
        _rule(["unshare"], [_arg(0, "SCMP_CMP_MASKED_EQ", UNSHARE_NAMESPACE_FLAGS)]),
        # Every socket family but vsock (a path to the host).
        _rule(["socket"], [_arg(0, "SCMP_CMP_NE", AF_VSOCK)]),
    ]
    rules += [_rule(["personality"], [_arg(0, "SCMP_CMP_EQ", p)]) for p in PERSONALITIES]
    rules.append(
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
    )
    return rules


def default_profile(machine: str | None = None, kernel: str | None = None) -> dict:
    """The OCI ``linux.seccomp`` object every sdcd container runs under."""
    machine = machine or platform.machine()
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHITECTURES.get(machine, []),
        "syscalls": [_rule(allowed_syscalls(machine, kernel)), *_conditional_rules(machine)],
    }
