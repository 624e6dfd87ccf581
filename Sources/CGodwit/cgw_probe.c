#define _GNU_SOURCE
#include "cgw_probe.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_close_range
#define __NR_close_range 436
#endif

// ---- the child: async-signal-safe syscalls only (it was forked from a threaded parent) ----

static void child_close_other_fds(int a, int b) {
    int lo = a < b ? a : b, hi = a < b ? b : a;
    // Inherited copies of other threads' pipes would keep their EOFs from arriving.
    if (lo > 3) syscall(__NR_close_range, 3, lo - 1, 0);
    if (hi > lo + 1) syscall(__NR_close_range, lo + 1, hi - 1, 0);
    syscall(__NR_close_range, hi + 1, ~0U, 0);
}

static int child_write_all(int fd, const void *buf, size_t len) {
    const char *p = buf;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static void child_ack(int fd, uint64_t value) {
    if (child_write_all(fd, &value, sizeof value) < 0) _exit(3);
}

static volatile sig_atomic_t usr1_count;
static void on_usr1(int sig) {
    (void)sig;
    usr1_count++;
}

static void __attribute__((noreturn))
child_main(pid_t parent, size_t pages, size_t page_size, int cmd_fd, int ack_fd) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(1);  // parent died before prctl took effect
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);  // the forking thread's mask is inherited
    child_close_other_fds(cmd_fd, ack_fd);
    // Counting SIGUSR1 lets tests check that signals arriving during an injection are
    // delivered afterwards, not lost.
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);

    unsigned char *mem = mmap(NULL, pages * page_size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) _exit(2);
    for (size_t i = 0; i < pages; i++)
        *(volatile uint64_t *)(mem + i * page_size + 8) = CGW_PROBE_MAGIC ^ (uint64_t)i;
    child_ack(ack_fd, (uint64_t)(uintptr_t)mem);

    uint64_t handled = 0;
    for (;;) {
        uint64_t cmd;
        size_t got = 0;
        while (got < sizeof cmd) {
            ssize_t n = read(cmd_fd, (char *)&cmd + got, sizeof cmd - got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) _exit(0);  // parent closed the pipe
            got += (size_t)n;
        }
        handled++;
        uint64_t op = cmd >> 56, ack = CGW_PROBE_ACK_ERROR;
        if (op == CGW_PROBE_OP_WRITE) {
            uint64_t page = cmd & 0xFFFFFFFFULL;
            if (page < pages) {
                mem[page * page_size] += 1;
                ack = 1;
            }
        } else if (op == CGW_PROBE_OP_STRIDE) {
            uint64_t first = cmd & 0xFFFFFF, count = (cmd >> 24) & 0xFFFFFF;
            uint64_t stride = (cmd >> 48) & 0xFF;
            if (stride == 0) stride = 1;
            if (count == 0 || first + (count - 1) * stride < pages) {
                for (uint64_t k = 0; k < count; k++) mem[(first + k * stride) * page_size] += 1;
                ack = count;
            }
        } else if (op == CGW_PROBE_OP_DROP) {
            uint64_t page = cmd & 0xFFFFFFFFULL;
            if (page < pages && madvise(mem + page * page_size, page_size, MADV_DONTNEED) == 0) ack = 1;
        } else if (op == CGW_PROBE_OP_SIGNALS) {
            ack = (uint64_t)usr1_count;
        } else if (op == CGW_PROBE_OP_PING) {
            ack = handled;
        } else if (op == CGW_PROBE_OP_EXIT) {
            _exit(0);
        }
        child_ack(ack_fd, ack);
    }
}

// ---- the parent side ------------------------------------------------------------------

int cgw_probe_read_ack(const struct cgw_probe_target *t, uint64_t *ack, int timeout_ms) {
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t got = 0;
    uint64_t value = 0;
    while (got < sizeof value) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (elapsed >= timeout_ms) return -ETIMEDOUT;
        struct pollfd p = {.fd = t->ack_fd, .events = POLLIN};
        int r = poll(&p, 1, (int)(timeout_ms - elapsed));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -errno;
        if (r == 0) return -ETIMEDOUT;
        ssize_t n = read(t->ack_fd, (char *)&value + got, sizeof value - got);
        if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
        if (n < 0) return -errno;
        if (n == 0) return -EPIPE;  // child gone
        got += (size_t)n;
    }
    if (ack) *ack = value;
    return 0;
}

int cgw_probe_send(const struct cgw_probe_target *t, uint64_t cmd) {
    // A dead child must not SIGPIPE the whole (test) process: block SIGPIPE for this
    // thread, and swallow the one our write may raise.
    sigset_t pipe_set, old;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, &old);
    ssize_t n;
    do n = write(t->cmd_fd, &cmd, sizeof cmd);
    while (n < 0 && errno == EINTR);
    int err = n < 0 ? errno : 0;
    if (err == EPIPE) {
        struct timespec zero = {0, 0};
        sigtimedwait(&pipe_set, NULL, &zero);
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err) return -err;
    return n == (ssize_t)sizeof cmd ? 0 : -EIO;
}

int cgw_probe_command(const struct cgw_probe_target *t, uint64_t cmd, uint64_t *ack, int timeout_ms) {
    int rc = cgw_probe_send(t, cmd);
    if (rc || (cmd >> 56) == CGW_PROBE_OP_EXIT) return rc;
    return cgw_probe_read_ack(t, ack, timeout_ms);
}

void cgw_probe_target_destroy(struct cgw_probe_target *t) {
    if (t->pid > 0) {
        kill(t->pid, SIGKILL);
        while (waitpid(t->pid, NULL, __WALL) < 0 && errno == EINTR) {
        }
        t->pid = -1;
    }
    if (t->cmd_fd >= 0) close(t->cmd_fd);
    if (t->ack_fd >= 0) close(t->ack_fd);
    t->cmd_fd = t->ack_fd = -1;
}

int cgw_spawn_probe_target(size_t pages, struct cgw_probe_target *out) {
    memset(out, 0, sizeof *out);
    out->pid = -1;
    out->cmd_fd = out->ack_fd = -1;
    if (pages == 0) return -EINVAL;
    long page_size = sysconf(_SC_PAGESIZE);  // not async-signal-safe: ask before fork
    int cmd[2], ack[2];
    if (pipe2(cmd, O_CLOEXEC) < 0) return -errno;
    if (pipe2(ack, O_CLOEXEC) < 0) {
        int err = errno;
        close(cmd[0]);
        close(cmd[1]);
        return -err;
    }
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(cmd[0]), close(cmd[1]), close(ack[0]), close(ack[1]);
        return -err;
    }
    if (pid == 0) child_main(parent, pages, (size_t)page_size, cmd[0], ack[1]);

    close(cmd[0]);
    close(ack[1]);
    out->pid = pid;
    out->pages = pages;
    out->cmd_fd = cmd[1];
    out->ack_fd = ack[0];
    out->child_cmd_fd = cmd[0];
    out->child_ack_fd = ack[1];
    uint64_t base = 0;
    int rc = cgw_probe_read_ack(out, &base, 2000);
    if (rc) {
        cgw_probe_target_destroy(out);
        return rc;
    }
    out->base = base;
    return 0;
}
