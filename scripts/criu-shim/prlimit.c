// Preloaded into the provisioned CRIU (scripts/provision-criu.sh): lets CRIU read another
// process's rlimits on hosts whose root lacks CAP_SYS_RESOURCE (this project's machine
// kind: it is missing from root's bounding set). There, prlimit64(pid, res, NULL, &old) of
// a task with another uid fails with EPERM, so CRIU's dump_task_rlimits() fails on the
// first non-root process (dbus-daemon, nginx's workers, PostgreSQL). The same values are
// in /proc/PID/limits, readable by root: on EPERM, and only for a read of another
// process, answer from there. Every other call goes to the kernel unchanged.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

// CRIU runs tar, ip and iptables-restore: they must not inherit this library.
__attribute__((constructor)) static void forget_preload(void) { unsetenv("LD_PRELOAD"); }

typedef long (*syscall_fn)(long, ...);

static long raw(long n, long a, long b, long c, long d, long e, long f) {
    static syscall_fn next;
    if (!next) next = (syscall_fn)dlsym(RTLD_NEXT, "syscall");
    return next(n, a, b, c, d, e, f);
}

// Rows of /proc/PID/limits in RLIMIT_* order (fs/proc/base.c lnames[]).
static unsigned long long parse_limit(const char *s, int *ok) {
    while (*s == ' ') s++;
    if (strncmp(s, "unlimited", 9) == 0) return RLIM64_INFINITY;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (end == s || errno) *ok = 0;
    return v;
}

static int limits_from_proc(pid_t pid, int resource, struct rlimit64 *out) {
    if (resource < 0 || resource >= RLIM_NLIMITS) return -1;
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/limits", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    int row = -1, ok = 0;
    while (fgets(line, sizeof line, f)) {
        if (row++ < 0) continue;  // header
        if (row - 1 != resource) continue;
        // "Max cpu time              unlimited            unlimited            seconds"
        // The name column is 26 wide, the soft and hard columns 21 each.
        if (strlen(line) < 26 + 21) break;
        ok = 1;
        out->rlim_cur = parse_limit(line + 26, &ok);
        out->rlim_max = parse_limit(line + 26 + 21, &ok);
        break;
    }
    fclose(f);
    return ok ? 0 : -1;
}

long syscall(long n, ...) {
    va_list ap;
    va_start(ap, n);
    long a = va_arg(ap, long), b = va_arg(ap, long), c = va_arg(ap, long);
    long d = va_arg(ap, long), e = va_arg(ap, long), f = va_arg(ap, long);
    va_end(ap);
    long ret = raw(n, a, b, c, d, e, f);
    if (n == SYS_prlimit64 && ret < 0 && errno == EPERM && a != 0 && a != getpid() && c == 0 && d != 0) {
        if (limits_from_proc((pid_t)a, (int)b, (struct rlimit64 *)d) == 0) return 0;
        errno = EPERM;
    }
    return ret;
}
