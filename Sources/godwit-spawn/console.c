// The container's console (docs/console.md): a pty of the container's own devpts whose
// slave is the init's stdio and /dev/console, and whose master a keeper process inside the
// container holds (keeper/godwit-console-keeper.c); and `godwit-spawn console`, the client
// that attaches to the keeper's abstract socket.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "spawn.h"

// In /dev (a tmpfs of the container's, saved by CRIU): the keeper's executable must be on a
// mount the container sees, or CRIU can't dump it. Its name is the keeper's comm, which is
// how the daemon finds it (Sources/Checkpoint/ConsoleKeeper.swift).
#define KEEPER_PATH "/dev/.console-keeper"
// Abstract: systemd mounts a tmpfs on /run that would hide a socket file bound before it.
#define SOCKET_NAME "godwit-console"
#define CTRL_A 1

static socklen_t socket_address(struct sockaddr_un *a) {
    memset(a, 0, sizeof *a);
    a->sun_family = AF_UNIX;
    memcpy(a->sun_path + 1, SOCKET_NAME, strlen(SOCKET_NAME));
    return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(SOCKET_NAME));
}

static void copy_keeper(int src) {
    int dst = open(KEEPER_PATH, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0700);
    if (dst < 0) fail("create %s", KEEPER_PATH);
    char buf[65536];
    ssize_t n;
    while ((n = read(src, buf, sizeof buf)) > 0)
        if (write_all_fd(dst, buf, (size_t)n) < 0) fail("copy the console keeper");
    if (n < 0) fail("read the console keeper");
    close(dst);
    close(src);
}

// Runs in the container after pivot_root (so /dev/ptmx is the container's devpts) and
// before the init: the socket is bound before anything of the container's can run.
void console_prepare(int keeper_src, struct console_setup *c) {
    copy_keeper(keeper_src);
    c->master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (c->master < 0) fail("open the container's /dev/ptmx");
    int unlock = 0, n;
    if (ioctl(c->master, TIOCSPTLCK, &unlock) < 0 || ioctl(c->master, TIOCGPTN, &n) < 0) fail("pty");
    c->slave = ioctl(c->master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (c->slave < 0) fail("open the console pty's slave");
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    ioctl(c->master, TIOCSWINSZ, &ws);
    // A symlink, not LXC's bind mount of the pts node: CRIU restores mounts before ptys
    // exist, so a bind-mounted /dev/pts/N could not be restored; a link on the /dev tmpfs is.
    char target[32];
    snprintf(target, sizeof target, "pts/%d", n);
    if (symlink(target, "/dev/console") < 0) fail("symlink /dev/console");
    c->listener = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a;
    socklen_t len = socket_address(&a);
    if (c->listener < 0 || bind(c->listener, (struct sockaddr *)&a, len) < 0 || listen(c->listener, 4) < 0)
        fail("console socket");
}

// Forks the keeper (fd 3 master, fd 4 listener, argv[1] the log) and makes the slave our
// stdio. A failed exec is reported on the setup error pipe, like any setup failure.
void console_start_keeper(struct console_setup *c, const char *log) {
    pid_t pid = fork();
    if (pid < 0) fail("fork the console keeper");
    if (pid == 0) {
        int m = fcntl(c->master, F_DUPFD_CLOEXEC, 10), l = fcntl(c->listener, F_DUPFD_CLOEXEC, 10);
        int devnull = open("/dev/null", O_RDWR);
        if (m < 0 || l < 0 || devnull < 0) fail("console keeper fds");
        if (dup2(devnull, 0) < 0 || dup2(devnull, 1) < 0 || dup2(devnull, 2) < 0 ||
            dup2(m, 3) < 0 || dup2(l, 4) < 0)
            fail("console keeper dup2");
        // Everything else inherited (the daemon's fds too) goes at exec: CRIU dumps the keeper.
        syscall(SYS_close_range, 5, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */);
        setsid();
        char *argv[] = {"console-keeper", (char *)log, NULL};
        char *envp[] = {NULL};
        execve(KEEPER_PATH, argv, envp);
        fail("exec %s", KEEPER_PATH);
    }
    if (dup2(c->slave, 0) < 0 || dup2(c->slave, 1) < 0 || dup2(c->slave, 2) < 0) fail("dup2 console");
    close(c->slave);
    close(c->master);
    close(c->listener);
}

// Ctrl-a q detaches, Ctrl-a a sends a Ctrl-a (as lxc-console); any other byte after Ctrl-a
// is passed on with it. Returns -1 when the user asked to detach.
static ssize_t filter_input(const char *in, ssize_t n, char *out, int *escaped) {
    ssize_t m = 0;
    for (ssize_t i = 0; i < n; i++) {
        char ch = in[i];
        if (*escaped) {
            *escaped = 0;
            if (ch == 'q') return -1;
            if (ch != 'a' && ch != CTRL_A) out[m++] = CTRL_A;
            out[m++] = ch == 'a' ? CTRL_A : ch;
        } else if (ch == CTRL_A) *escaped = 1;
        else out[m++] = ch;
    }
    return m;
}

static int relay(int sock) {
    static char in[8192], out[16384];
    int sfd = terminal_signals();
    terminal_raw();
    int escaped = 0, code = 0;
    for (;;) {
        struct pollfd p[3] = {
            {.fd = sfd, .events = POLLIN}, {.fd = sock, .events = POLLIN}, {.fd = STDIN_FILENO, .events = POLLIN},
        };
        if (poll(p, 3, -1) < 0) {
            if (errno == EINTR) continue;
            code = 1;
            break;
        }
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            int stop = 0;
            while (read(sfd, &si, sizeof si) == sizeof si)
                if (si.ssi_signo != SIGWINCH && si.ssi_signo != SIGCHLD) stop = 1;
            if (stop) break;
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(sock, out, sizeof out);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;  // the keeper dropped us (its reason was the last output)
            if (write_all_fd(STDOUT_FILENO, out, (size_t)r) < 0) break;
        }
        if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(STDIN_FILENO, in, sizeof in);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;  // EOF detaches
            ssize_t m = filter_input(in, r, out, &escaped);
            if (m > 0 && write_all_fd(sock, out, (size_t)m) < 0) break;
            if (m < 0) break;
        }
    }
    terminal_restore();
    if (code == 0) fprintf(stderr, "\r\n[detached from the console]\r\n");
    return code;
}

int spawn_console(pid_t target) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/net", target);
    int ns = open(path, O_RDONLY | O_CLOEXEC);
    if (ns < 0) fail("open %s (is the container running?)", path);
    // Only the network namespace: that is where the abstract name lives.
    if (setns(ns, CLONE_NEWNET) < 0) fail("setns net of pid %d", target);
    close(ns);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a;
    socklen_t len = socket_address(&a);
    if (sock < 0) fail("socket");
    if (connect(sock, (struct sockaddr *)&a, len) < 0) {
        if (errno == ECONNREFUSED || errno == ENOENT)
            die("this container has no console keeper (it was started without one, or it died)");
        fail("connect to the console");
    }
    char status;
    ssize_t r;
    while ((r = read(sock, &status, 1)) < 0 && errno == EINTR) {}
    if (r != 1) die("the console keeper closed the connection");
    if (status != 'K') {
        char why[256];
        ssize_t n = read(sock, why, sizeof why - 1);
        why[n > 0 ? n : 0] = 0;
        if (n > 0 && why[n - 1] == '\n') why[n - 1] = 0;
        die("console refused: %s", why);
    }
    return relay(sock);
}
