#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <poll.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spawn.h"

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static volatile pid_t child_pid;

static void forward(int sig) {
    if (child_pid > 0) kill(child_pid, sig);
}

// user first: an unprivileged container's namespaces belong to it, and joining it gives
// the capabilities the other joins need there. mnt last: after it, /proc/PID/ns and
// /sys/fs/cgroup are the container's, not ours. time: CRIU restores every container into
// a new time namespace.
static const struct { const char *name; int type; } namespaces[] = {
    {"user", CLONE_NEWUSER}, {"cgroup", CLONE_NEWCGROUP}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS},
    {"net", CLONE_NEWNET}, {"pid", CLONE_NEWPID}, {"time", CLONE_NEWTIME},
    {"mnt", CLONE_NEWNS},
};
#define NNS (sizeof namespaces / sizeof namespaces[0])

static int same_namespace(int fd, const char *name) {
    char path[64];
    struct stat mine, theirs;
    snprintf(path, sizeof path, "/proc/self/ns/%s", name);
    if (stat(path, &mine) < 0 || fstat(fd, &theirs) < 0) return 0;
    return mine.st_dev == theirs.st_dev && mine.st_ino == theirs.st_ino;
}

// Opened after setns into the container's mount namespace: /dev/ptmx is then the
// container's devpts instance, so the pair is the container's own (CRIU-dumpable once we
// are gone, visible as /dev/pts/N inside). TIOCGPTPEER opens the slave without a path.
static void open_container_pty(int *master, int *slave) {
    *master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*master < 0) fail("open the container's /dev/ptmx");
    int unlock = 0;
    if (ioctl(*master, TIOCSPTLCK, &unlock) < 0) fail("unlock pty");
    *slave = ioctl(*master, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (*slave < 0) fail("open the pty's slave");
    terminal_copy_size(*master);
}

static int exit_code(int status) {
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 125;
}

// Relays stdin -> master and master -> stdout until the command exits and its output is
// drained. After the exit, the master reads EIO once every slave holder is gone; a
// background job that keeps the slave open must not keep us here, hence the quiet timeout.
static int relay_pty(int master, pid_t pid) {
    static char buf[16384];
    int sfd = terminal_signals();
    terminal_raw();
    int in_open = 1, status = 0, exited = 0;
    for (;;) {
        struct pollfd p[3] = {
            {.fd = sfd, .events = POLLIN},
            {.fd = master, .events = POLLIN},
            {.fd = in_open && !exited ? STDIN_FILENO : -1, .events = POLLIN},
        };
        int n = poll(p, 3, exited ? 200 : -1);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("poll");
        if (n == 0) break;  // exited and quiet
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {
                if (si.ssi_signo == SIGWINCH) terminal_copy_size(master);
                else if (si.ssi_signo == SIGCHLD) {
                    if (!exited && waitpid(pid, &status, WNOHANG) == pid) exited = 1;
                } else kill(pid, (int)si.ssi_signo);
            }
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(master, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                if (exited) break;
                // EIO before the exit: the command closed the terminal; wait for it.
                while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
                exited = 1;
                break;
            }
            if (write_all_fd(STDOUT_FILENO, buf, (size_t)r) < 0) kill(pid, SIGHUP);
        }
        if (p[2].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(STDIN_FILENO, buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) {
                // Like a terminal's ^D: the line discipline turns EOF into end of input
                // for the reader (in canonical mode), then we stop reading stdin.
                char eof = 4;
                if (write(master, &eof, 1) < 0) {}
                in_open = 0;
            } else if (write_all_fd(master, buf, (size_t)r) < 0) in_open = 0;
        }
    }
    if (!exited) while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    terminal_restore();
    return exit_code(status);
}

int spawn_exec(const struct spawn_options *o) {
    int fds[NNS];
    char path[128];
    // Open them all first: each setns changes what /proc/PID/ns resolves against.
    for (size_t i = 0; i < NNS; i++) {
        snprintf(path, sizeof path, "/proc/%d/ns/%s", o->target, namespaces[i].name);
        fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0 && !(errno == ENOENT && namespaces[i].type == CLONE_NEWTIME))
            fail("open %s (is the container running?)", path);
    }
    join_cgroups(o);
    int joined_user = 0;
    for (size_t i = 0; i < NNS; i++) {
        if (fds[i] < 0) continue;
        if (!same_namespace(fds[i], namespaces[i].name)) {
            if (setns(fds[i], namespaces[i].type) < 0) fail("setns %s of pid %d", namespaces[i].name, o->target);
            if (namespaces[i].type == CLONE_NEWUSER) joined_user = 1;
        }
        close(fds[i]);
    }
    // Host root is unmapped in there: what it ran would be "nobody" and create files that
    // the container's root doesn't own.
    if (joined_user) become_namespace_root();
    int master = -1, slave = -1;
    if (o->tty) open_container_pty(&master, &slave);
    fflush(stdout);
    pid_t pid = fork();  // joining a pid namespace only applies to children
    if (pid < 0) fail("fork");
    if (pid == 0) {
        if (o->tty) {
            // The container's pty becomes the controlling terminal of a session of its own.
            if (setsid() < 0 || ioctl(slave, TIOCSCTTY, 0) < 0) fail("making the pty the controlling terminal");
            if (dup2(slave, 0) < 0 || dup2(slave, 1) < 0 || dup2(slave, 2) < 0) fail("dup2 pty");
        }
        // Own session, so that anything it leaves running is a clean subtree for CRIU;
        // keep the caller's session when it is interactive (it owns the terminal).
        else if (!isatty(STDIN_FILENO)) setsid();
        const char *cwd = o->cwd ? o->cwd : "/";
        if (chdir(cwd) < 0) fail("chdir %s", cwd);
        close_inherited_fds(-1);
        // What runs in a container lives under its init's bounding set and filter (as
        // lxc-attach does): a nested namespace made from a shell would block the next
        // checkpoint, and a denied syscall must stay denied.
        apply_confinement(o);
        exec_command(o);
    }
    child_pid = pid;
    if (o->tty) {
        close(slave);
        return relay_pty(master, pid);
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) fail("waitpid");
    return exit_code(status);
}
