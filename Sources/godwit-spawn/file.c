// godwit-spawn file push|pull: copies one file into or out of a container.
//
// Container paths are resolved by openat2(RESOLVE_IN_ROOT) relative to an fd of
// /proc/PID/root: "..", absolute symlinks and absolute paths all stay inside the
// container's root, so a symlink to / (or to /etc/passwd) in the container can't make us
// write on the host, which a plain open("/proc/PID/root/" + path) would. Magic links
// (/proc/self/...) are refused as well. No namespace is joined: root on the host is root
// in the container (no user namespace), so ownership numbers mean the same on both sides.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/capability.h>
#include <sys/fsuid.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spawn.h"

// Declared here: Debian 12's headers have no openat2 wrapper, and we need no more.
struct godwit_open_how {
    uint64_t flags;
    uint64_t mode;
    uint64_t resolve;
};
#ifndef SYS_openat2
#define SYS_openat2 437
#endif
#define GW_RESOLVE_NO_MAGICLINKS 0x02
#define GW_RESOLVE_IN_ROOT 0x10

static const char file_usage[] =
    "usage: godwit-spawn file push --pid PID [--mode OCTAL] [--uid N] [--gid N] LOCAL PATH\n"
    "       godwit-spawn file pull --pid PID PATH LOCAL\n";

static long number(const char *what, const char *text, int base, long max) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, base);
    if (errno || end == text || *end || v < 0 || v > max) die("invalid %s '%s'", what, text);
    return v;
}

static int open_in_container(pid_t pid, const char *path, int flags, mode_t mode) {
    if (path[0] == 0) die("empty path in the container");
    if (strlen(path) >= PATH_MAX) die("path in the container is too long (%zu bytes, at most %d)", strlen(path), PATH_MAX - 1);
    char root[64];
    snprintf(root, sizeof root, "/proc/%d/root", pid);
    int rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (rootfd < 0) fail("open %s (is the container running?)", root);
    struct godwit_open_how how = {
        .flags = (uint64_t)(flags | O_CLOEXEC), .mode = (flags & O_CREAT) ? mode : 0,
        .resolve = GW_RESOLVE_IN_ROOT | GW_RESOLVE_NO_MAGICLINKS,
    };
    // With ".." in the path the kernel answers EAGAIN when any rename or mount on the
    // machine raced with the walk (it can't then vouch that ".." stayed inside): try again.
    int fd = -1;
    for (int attempt = 0; attempt < 1000; attempt++) {
        fd = (int)syscall(SYS_openat2, rootfd, path, &how, sizeof how);
        if (fd >= 0 || (errno != EAGAIN && errno != EINTR)) break;
    }
    int saved = errno;
    close(rootfd);
    if (fd < 0) {
        errno = saved;
        if (errno == ENOENT) die("%s: no such file or directory in the container", path);
        if (errno == EISDIR) die("%s is a directory in the container", path);
        if (errno == ENOSYS) die("openat2 is not supported by this kernel (Linux 5.6 or newer needed)");
        fail("open %s in the container", path);
    }
    return fd;
}

static void copy(int from, int to, const char *what) {
    static char buf[1 << 16];
    for (;;) {
        ssize_t n = read(from, buf, sizeof buf);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) fail("reading %s", what);
        if (n == 0) return;
        if (write_all_fd(to, buf, (size_t)n) < 0) fail("writing %s", what);
    }
}

static void require_regular(int fd, const char *path, const char *where) {
    struct stat st;
    if (fstat(fd, &st) < 0) fail("stat %s", path);
    if (S_ISDIR(st.st_mode)) die("%s is a directory%s", path, where);
    if (!S_ISREG(st.st_mode)) die("%s is not a regular file%s", path, where);
}

// The host id of `id` inside the container whose init is `pid` (its /proc/PID/uid_map or
// gid_map); the identity for a privileged container. -1 when the map doesn't cover it.
static long host_id(pid_t pid, const char *map, long id) {
    char path[64], line[128];
    snprintf(path, sizeof path, "/proc/%d/%s", pid, map);
    FILE *f = fopen(path, "re");
    if (!f) fail("open %s", path);
    long found = -1;
    unsigned long inside, outside, count;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%lu %lu %lu", &inside, &outside, &count) == 3 && (unsigned long)id >= inside &&
            (unsigned long)id - inside < count) {
            found = (long)(outside + ((unsigned long)id - inside));
            break;
        }
    fclose(f);
    return found;
}

// An unprivileged container's file systems of its own (/tmp, /run: tmpfs mounted in its
// user namespace) refuse to create files for host root, who is unmapped there
// (EOVERFLOW). Inside the container we act as its root: fsuid and fsgid become the map's
// base (which also makes new files the container root's), and the effective capabilities
// that change drops are raised again, so permissions are what root inside would have.
static void act_as_container_root(long uid, long gid) {
    if (uid <= 0) return;
    setfsgid((gid_t)gid);
    setfsuid((uid_t)uid);
    struct __user_cap_header_struct head = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[2];
    if (syscall(SYS_capget, &head, data) < 0) fail("capget");
    data[0].effective = data[0].permitted;
    data[1].effective = data[1].permitted;
    if (syscall(SYS_capset, &head, data) < 0) fail("capset");
}

static void act_as_host_root(void) {
    setfsuid(0);
    setfsgid(0);
}

int spawn_file(int argc, char **argv) {
    // argv: godwit-spawn file push|pull --pid PID [options] A B
    if (argc < 3) die("%s", file_usage);
    int push = strcmp(argv[2], "push") == 0;
    if (!push && strcmp(argv[2], "pull") != 0) die("unknown file mode %s\n%s", argv[2], file_usage);
    pid_t pid = 0;
    long mode = -1, uid = -1, gid = -1;
    const char *args[2];
    int nargs = 0;
    for (int i = 3; i < argc; i++) {
        const char *a = argv[i];
        int has_value = i + 1 < argc;
        if (strcmp(a, "--pid") == 0 && has_value) pid = (pid_t)number("pid", argv[++i], 10, INT32_MAX);
        else if (push && strcmp(a, "--mode") == 0 && has_value) mode = number("mode", argv[++i], 8, 07777);
        else if (push && strcmp(a, "--uid") == 0 && has_value) uid = number("uid", argv[++i], 10, UINT32_MAX - 1);
        else if (push && strcmp(a, "--gid") == 0 && has_value) gid = number("gid", argv[++i], 10, UINT32_MAX - 1);
        else if (a[0] == '-' && a[1] == '-') die("unknown or incomplete option %s\n%s", a, file_usage);
        else if (nargs < 2) args[nargs++] = a;
        else die("too many arguments\n%s", file_usage);
    }
    if (pid <= 0 || nargs != 2) die("%s", file_usage);

    if (push) {
        int in = open(args[0], O_RDONLY | O_CLOEXEC);
        if (in < 0) fail("open %s", args[0]);
        require_regular(in, args[0], "");
        // Not O_TRUNC at open: a file we must not write (a directory) fails first, and a
        // FIFO or device in the container is refused before anything touches it.
        long root_uid = host_id(pid, "uid_map", 0), root_gid = host_id(pid, "gid_map", 0);
        act_as_container_root(root_uid, root_gid);
        int out = open_in_container(pid, args[1], O_WRONLY | O_CREAT | O_NOCTTY | O_NONBLOCK,
                                    mode >= 0 ? (mode_t)mode : 0644);
        require_regular(out, args[1], " in the container");
        if (ftruncate(out, 0) < 0) fail("truncate %s", args[1]);
        int flags = fcntl(out, F_GETFL);
        if (flags >= 0) fcntl(out, F_SETFL, flags & ~O_NONBLOCK);
        copy(in, out, args[1]);
        // --uid and --gid are ids inside the container (new files are already its root's).
        if (uid >= 0 && (uid = host_id(pid, "uid_map", uid)) < 0) die("that uid is not mapped in the container");
        if (gid >= 0 && (gid = host_id(pid, "gid_map", gid)) < 0) die("that gid is not mapped in the container");
        if ((uid >= 0 || gid >= 0) && fchown(out, uid >= 0 ? (uid_t)uid : (uid_t)-1, gid >= 0 ? (gid_t)gid : (gid_t)-1) < 0)
            fail("chown %s", args[1]);
        // After chown, which clears set-id bits; and explicit, as the umask shaped O_CREAT's.
        if (mode >= 0 && fchmod(out, (mode_t)mode) < 0) fail("chmod %s", args[1]);
        if (close(out) < 0) fail("close %s", args[1]);
        return 0;
    }
    act_as_container_root(host_id(pid, "uid_map", 0), host_id(pid, "gid_map", 0));
    int in = open_in_container(pid, args[0], O_RDONLY | O_NOCTTY | O_NONBLOCK, 0);
    // The local copy is the caller's (host root's), not the container's.
    act_as_host_root();
    require_regular(in, args[0], " in the container");
    int flags = fcntl(in, F_GETFL);
    if (flags >= 0) fcntl(in, F_SETFL, flags & ~O_NONBLOCK);
    int out = strcmp(args[1], "-") == 0 ? STDOUT_FILENO
        : open(args[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) fail("open %s", args[1]);
    copy(in, out, args[1]);
    if (out != STDOUT_FILENO && close(out) < 0) fail("close %s", args[1]);
    return 0;
}
