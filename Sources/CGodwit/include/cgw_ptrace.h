#ifndef CGW_PTRACE_H
#define CGW_PTRACE_H
// Running one syscall inside another process, the way CRIU's parasite-less paths do:
// seize one thread, stop it with PTRACE_INTERRUPT, point its instruction pointer at an
// existing `syscall` instruction (the vDSO has one), step to the syscall's exit, read the
// result, put the registers back. Only the seized thread stops; the others keep running.
//
// Contract (the kernel's, not ours):
// - Linux makes the *thread* that attached the tracer. Every call below for a given tid
//   must come from that same OS thread, from attach to detach (no Swift `await` between).
// - Attach waits for the tracee to stop. A task in uninterruptible sleep stops when it
//   wakes; a task frozen by the cgroup-v1 freezer never stops: attach before freezing.
// - If this process dies while a syscall is injected, the tracee resumes with the
//   injected registers and will most likely crash. Keep the attached window short.
// Functions return 0 (or a value >= 0) on success and -errno on failure.

#include <stdint.h>
#include <sys/syscall.h>
#include <sys/types.h>

// Syscall numbers of this architecture for injection (Swift doesn't import SYS_* macros).
enum {
    CGW_NR_getpid = __NR_getpid,
    CGW_NR_gettid = __NR_gettid,
    CGW_NR_close = __NR_close,
    CGW_NR_userfaultfd = __NR_userfaultfd,
    CGW_NR_read = __NR_read,
    CGW_NR_write = __NR_write,
};

// PTRACE_SEIZE(tid) + PTRACE_INTERRUPT, then waits until it is in a ptrace stop.
// A signal arriving meanwhile is delivered normally (not swallowed).
int cgw_ptrace_attach(pid_t tid);
// PTRACE_DETACH from a ptrace stop; the tracee continues. Signals held back during an
// injection have been re-raised by then. (A tracee that was in a job-control stop
// (SIGSTOP) is resumed by an injection; we don't re-stop it.)
int cgw_ptrace_detach(pid_t tid);

// Address of a `syscall` instruction in the tracee, searched in its [vdso] first, then in
// its other executable mappings. Returns 0 and sets *addr, or -errno (-ENOENT: none).
int cgw_find_syscall_insn(pid_t tid, uint64_t *addr);

// Runs syscall `nr`(a1..a6) in the attached, stopped tracee using the instruction at
// `insn`; *result is the raw return value (-errno style for failures of THAT syscall).
// The tracee's registers are restored afterwards; if it was inside an interrupted
// restartable syscall (-ERESTARTSYS & co.), the kernel restarts it as if never disturbed.
// Returns 0 when the injection itself worked, -errno when it didn't (-ESRCH: tracee died).
int cgw_inject_syscall_at(pid_t tid, uint64_t insn, long nr, long a1, long a2, long a3,
                          long a4, long a5, long a6, long *result);
// cgw_find_syscall_insn + cgw_inject_syscall_at (reads /proc/PID/maps on every call).
int cgw_inject_syscall(pid_t tid, long nr, long a1, long a2, long a3, long a4, long a5,
                       long a6, long *result);

#endif  // CGW_PTRACE_H
