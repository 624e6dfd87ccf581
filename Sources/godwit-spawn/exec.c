#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
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

// mnt last: after it, /proc/PID/ns and /sys/fs/cgroup are the container's, not ours.
// time: CRIU restores every container into a new time namespace.
static const struct { const char *name; int type; } namespaces[] = {
    {"cgroup", CLONE_NEWCGROUP}, {"ipc", CLONE_NEWIPC}, {"uts", CLONE_NEWUTS},
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
    for (size_t i = 0; i < NNS; i++) {
        if (fds[i] < 0) continue;
        if (!same_namespace(fds[i], namespaces[i].name) && setns(fds[i], namespaces[i].type) < 0)
            fail("setns %s of pid %d", namespaces[i].name, o->target);
        close(fds[i]);
    }
    fflush(stdout);
    pid_t pid = fork();  // joining a pid namespace only applies to children
    if (pid < 0) fail("fork");
    if (pid == 0) {
        // Own session, so that anything it leaves running is a clean subtree for CRIU;
        // keep the caller's session when it is interactive (it owns the terminal).
        if (!isatty(STDIN_FILENO)) setsid();
        const char *cwd = o->cwd ? o->cwd : "/";
        if (chdir(cwd) < 0) fail("chdir %s", cwd);
        close_inherited_fds(-1);
        exec_command(o);
    }
    child_pid = pid;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = forward;
    int forwarded[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++)
        sigaction(forwarded[i], &sa, NULL);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) fail("waitpid");
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return 125;
}
