#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spawn.h"

// Where fail() writes: stderr in the helper itself, the error pipe in the container child
// (whose stderr is already the console log by the time most steps can fail).
static int report_to = STDERR_FILENO;

int report_fd(int fd) {
    int old = report_to;
    report_to = fd;
    return old;
}

static void vreport(const char *fmt, va_list ap) {
    char buf[1024];
    int saved = errno;
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    if (n < 0) n = 0;
    if ((size_t)n >= sizeof buf) n = sizeof buf - 1;
    if (saved && n < (int)sizeof buf - 2)
        n += snprintf(buf + n, sizeof buf - n, ": %s", strerror(saved));
    if (report_to == STDERR_FILENO) {
        dprintf(STDERR_FILENO, "godwit-spawn: %.*s\n", n, buf);
    } else {
        // One write: the parent reads the whole message at once.
        if (write(report_to, buf, n) < 0) { /* nothing left to tell */ }
    }
}

// Fatal error that is not a syscall's fault: errno is not appended.
void die(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    errno = 0;
    vreport(fmt, ap);
    va_end(ap);
    _exit(125);
}

// Fatal error after a failed syscall: errno is appended.
void fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(fmt, ap);
    va_end(ap);
    _exit(125);
}

void write_string(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("open %s", path);
    ssize_t len = (ssize_t)strlen(value);
    if (write(fd, value, len) != len) fail("write %s to %s", value, path);
    close(fd);
}

// Joining before the namespaces exist makes the container's cgroup the root of its cgroup
// namespace, and charges everything it ever does to its limits.
void join_cgroups(const struct spawn_options *opts) {
    char path[4096], pid[32];
    snprintf(pid, sizeof pid, "%d", getpid());
    for (int i = 0; i < opts->ncgroups; i++) {
        snprintf(path, sizeof path, "%s/cgroup.procs", opts->cgroups[i]);
        write_string(path, pid);
    }
}

// CRIU treats every fd it can't explain as external and refuses to dump; the container
// must only hold what it opened itself. `keep` survives until exec (it is CLOEXEC).
void close_inherited_fds(int keep) {
    unsigned int lo = 3;
    if (keep >= 3) {
        if (keep > 3 && syscall(SYS_close_range, 3, keep - 1, 0) < 0) goto fallback;
        lo = (unsigned int)keep + 1;
    }
    if (syscall(SYS_close_range, lo, ~0U, 0) == 0) return;
fallback:
    for (int fd = 3; fd < 65536; fd++)
        if (fd != keep) close(fd);
}

void exec_command(const struct spawn_options *opts) {
    static char default_path[] = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    static char *fallback_env[] = { default_path, NULL };
    char **env = opts->nenv ? (char **)opts->env : fallback_env;
    // execvp searches the PATH of `environ`, which must be the container's, not ours.
    extern char **environ;
    environ = env;
    execvp(opts->argv[0], opts->argv);
    fail("exec %s", opts->argv[0]);
}
