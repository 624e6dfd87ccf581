#define _GNU_SOURCE
#include "cgw_ptrace.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cgw_memory.h"

// ---- architecture block: everything register-specific lives here -----------------------
#if defined(__x86_64__)
typedef struct user_regs_struct cgw_regs;
static const unsigned char k_syscall_insn[] = {0x0f, 0x05};  // `syscall`

static int regs_get(pid_t tid, cgw_regs *r) {
    return ptrace(PTRACE_GETREGS, tid, 0, r) < 0 ? -errno : 0;
}
static int regs_set(pid_t tid, const cgw_regs *r) {
    return ptrace(PTRACE_SETREGS, tid, 0, r) < 0 ? -errno : 0;
}
static void regs_setup_call(cgw_regs *r, uint64_t insn, long nr, const long a[6]) {
    r->rip = insn;
    r->rax = (unsigned long)nr;
    // orig_rax = -1 tells the kernel "not in a syscall": otherwise, resuming from a stop
    // inside an interrupted syscall would apply ITS restart logic (rip -= 2, rax = orig)
    // to our injected registers.
    r->orig_rax = (unsigned long)-1L;
    r->rdi = (unsigned long)a[0];
    r->rsi = (unsigned long)a[1];
    r->rdx = (unsigned long)a[2];
    r->r10 = (unsigned long)a[3];
    r->r8 = (unsigned long)a[4];
    r->r9 = (unsigned long)a[5];
}
static long regs_result(const cgw_regs *r) { return (long)r->rax; }
// Stopped on the way out of a syscall that the kernel would restart when no handler runs:
// -ERESTARTSYS (512), -ERESTARTNOINTR (513), -ERESTARTNOHAND (514),
// -ERESTART_RESTARTBLOCK (516). Only the kernel's signal path performs that restart.
static int regs_in_restartable_syscall(const cgw_regs *r) {
    long nr = (long)r->orig_rax, ret = (long)r->rax;
    return nr >= 0 && (ret == -512 || ret == -513 || ret == -514 || ret == -516);
}
#else
#error "cgw_ptrace.c: syscall injection is implemented for x86_64 only; add a register block for this architecture"
#endif
// ---- end of architecture block ----------------------------------------------------------

#define STOP_EVENT(st) ((unsigned)(st) >> 16)
#define IS_SYSCALL_STOP(st) (WSTOPSIG(st) == (SIGTRAP | 0x80) && STOP_EVENT(st) == 0)

// Next stop of tid; -ESRCH when it exited or was killed instead.
static int wait_stop(pid_t tid, int *st) {
    for (;;) {
        pid_t r = waitpid(tid, st, __WALL);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (WIFEXITED(*st) || WIFSIGNALED(*st)) return -ESRCH;
        if (WIFSTOPPED(*st)) return 0;
    }
}

// Waits for a PTRACE_EVENT_STOP. A signal-delivery-stop on the way is passed through (the
// program sees its signal as usual) and the interrupt re-armed, because that trap may
// have consumed the pending interrupt.
static int wait_event_stop(pid_t tid) {
    for (;;) {
        int st, rc = wait_stop(tid, &st);
        if (rc) return rc;
        if (STOP_EVENT(st) == PTRACE_EVENT_STOP) return 0;
        int sig = IS_SYSCALL_STOP(st) ? 0 : WSTOPSIG(st);
        if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) return -errno;
        if (ptrace(PTRACE_CONT, tid, 0, sig) < 0) return -errno;
    }
}

int cgw_ptrace_attach(pid_t tid) {
    // No PTRACE_O_EXITKILL: if we die, the target must live on.
    if (ptrace(PTRACE_SEIZE, tid, 0, PTRACE_O_TRACESYSGOOD) < 0) return -errno;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) return -errno;
    return wait_event_stop(tid);
}

int cgw_ptrace_detach(pid_t tid) { return ptrace(PTRACE_DETACH, tid, 0, 0) < 0 ? -errno : 0; }

static pid_t tgid_of(pid_t tid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    FILE *f = fopen(path, "re");
    if (!f) return tid;
    pid_t tgid = tid;
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "Tgid:", 5) == 0) {
            tgid = (pid_t)strtol(line + 5, NULL, 10);
            break;
        }
    }
    fclose(f);
    return tgid;
}

// Signals that arrived while injected registers were live were held back (a handler
// would have saved and later resumed the injected state); send them again now.
static void reraise(pid_t tid, uint64_t held) {
    if (!held) return;
    pid_t tgid = tgid_of(tid);
    for (int sig = 1; sig <= 64; sig++)
        if (held & (1ULL << (sig - 1))) cgw_tgkill(tgid, tid, sig);
}

// Resumes with PTRACE_SYSCALL until the injected syscall's entry (want_exit = 0) or exit
// stop. Stray interrupt/group stops are stepped over; signals are held in *held.
static int step_to_syscall_stop(pid_t tid, int want_exit, uint64_t *held) {
    for (;;) {
        if (ptrace(PTRACE_SYSCALL, tid, 0, 0) < 0) return -errno;
        int st, rc = wait_stop(tid, &st);
        if (rc) return rc;
        if (IS_SYSCALL_STOP(st)) {
            struct __ptrace_syscall_info info;
            if (ptrace(PTRACE_GET_SYSCALL_INFO, tid, sizeof info, &info) < 0) return -errno;
            if (info.op == (want_exit ? PTRACE_SYSCALL_INFO_EXIT : PTRACE_SYSCALL_INFO_ENTRY))
                return 0;
        } else if (STOP_EVENT(st) != PTRACE_EVENT_STOP) {
            int sig = WSTOPSIG(st);
            if (sig >= 1 && sig <= 64) *held |= 1ULL << (sig - 1);
        }
    }
}

// Puts the saved registers back EXACTLY, including rax = -ERESTART* and orig_rax = nr for
// a tracee interrupted inside a restartable syscall: only the kernel's signal path turns
// that into a restart (or -EINTR when a handler without SA_RESTART runs). PTRACE_DETACH
// happens to enter that path (unlinking sets TIF_SIGPENDING), but we lead the tracee
// through one more interrupt stop so every injection ends in a state that ANY resume
// handles correctly. Rewinding rip by hand would restart even where the kernel would
// have returned -EINTR; setting orig_rax = -1 would hand -512 to the program.
static int restore(pid_t tid, const cgw_regs *saved, uint64_t held) {
    int rc = regs_set(tid, saved);
    if (rc) return rc;
    reraise(tid, held);
    if (!regs_in_restartable_syscall(saved)) return 0;
    if (ptrace(PTRACE_INTERRUPT, tid, 0, 0) < 0) return -errno;
    if (ptrace(PTRACE_CONT, tid, 0, 0) < 0) return -errno;
    return wait_event_stop(tid);
}

int cgw_inject_syscall_at(pid_t tid, uint64_t insn, long nr, long a1, long a2, long a3,
                          long a4, long a5, long a6, long *result) {
    cgw_regs saved, regs;
    int rc = regs_get(tid, &saved);
    if (rc) return rc;
    regs = saved;
    const long args[6] = {a1, a2, a3, a4, a5, a6};
    regs_setup_call(&regs, insn, nr, args);
    if ((rc = regs_set(tid, &regs))) return rc;

    uint64_t held = 0;
    rc = step_to_syscall_stop(tid, 0, &held);
    if (!rc) rc = step_to_syscall_stop(tid, 1, &held);
    if (!rc) {
        cgw_regs after;
        rc = regs_get(tid, &after);
        if (!rc && result) *result = regs_result(&after);
    }
    if (rc == -ESRCH) return rc;  // gone: nothing to restore
    int rc2 = restore(tid, &saved, held);
    return rc ? rc : rc2;
}

// Reads [start, start+len) of the tracee, trying process_vm_readv first and
// /proc/PID/mem (FOLL_FORCE) for mappings it refuses.
static long read_remote(pid_t tid, unsigned char *buf, uint64_t start, size_t len) {
    long n = cgw_process_vm_read(tid, buf, start, len);
    if (n > 0) return n;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/mem", tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    n = cgw_proc_mem_read(fd, buf, start, len);
    close(fd);
    return n;
}

static int search_mapping(pid_t tid, uint64_t start, uint64_t end, uint64_t *addr) {
    size_t len = end - start;
    if (len > 256 * 1024) len = 256 * 1024;  // the first text pages are plenty
    unsigned char *buf = malloc(len);
    if (!buf) return -ENOMEM;
    long n = read_remote(tid, buf, start, len);
    int rc = -ENOENT;
    for (long i = 0; i + 1 < n; i++) {
        if (buf[i] == k_syscall_insn[0] && buf[i + 1] == k_syscall_insn[1]) {
            *addr = start + (uint64_t)i;
            rc = 0;
            break;
        }
    }
    free(buf);
    return rc;
}

int cgw_find_syscall_insn(pid_t tid, uint64_t *addr) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/maps", tid);
    // Pass 0: the vDSO (same code in every process, always mapped, never unmapped by
    // programs). Pass 1: any other executable mapping, for kernels booted with vdso=0.
    for (int pass = 0; pass < 2; pass++) {
        FILE *f = fopen(path, "re");
        if (!f) return -errno;
        char line[512];
        int rc = -ENOENT;
        while (rc != 0 && fgets(line, sizeof line, f)) {
            unsigned long long s, e;
            char perms[8] = {0};
            if (sscanf(line, "%llx-%llx %7s", &s, &e, perms) != 3) continue;
            int is_vdso = strstr(line, "[vdso]") != NULL;
            if (perms[2] != 'x' || perms[0] != 'r') continue;
            if (pass == 0 ? !is_vdso : is_vdso || strstr(line, "[vsyscall]")) continue;
            rc = search_mapping(tid, s, e, addr);
        }
        fclose(f);
        if (rc == 0) return 0;
    }
    return -ENOENT;
}

int cgw_inject_syscall(pid_t tid, long nr, long a1, long a2, long a3, long a4, long a5,
                       long a6, long *result) {
    uint64_t insn;
    int rc = cgw_find_syscall_insn(tid, &insn);
    if (rc) return rc;
    return cgw_inject_syscall_at(tid, insn, nr, a1, a2, a3, a4, a5, a6, result);
}
