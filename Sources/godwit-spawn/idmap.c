// Idmapped mounts: how an unprivileged container's root sees the shared image as its own
// without a chowned copy (docs/unprivileged.md). util-linux 2.38 (Debian 12) has no
// X-mount.idmap, so this is open_tree + mount_setattr(MOUNT_ATTR_IDMAP) + move_mount.
// The map is taken from a user namespace made here and thrown away: the kernel copies it
// into the mount, so the same code serves a first start and a restore, where the
// container's own namespace doesn't exist yet (CRIU makes it).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spawn.h"

#ifndef SYS_open_tree
#define SYS_open_tree 428
#endif
#ifndef SYS_move_mount
#define SYS_move_mount 429
#endif
#ifndef SYS_mount_setattr
#define SYS_mount_setattr 442
#endif
#define GW_OPEN_TREE_CLONE 1
#define GW_MOVE_MOUNT_F_EMPTY_PATH 0x00000004
#define GW_MOUNT_ATTR_IDMAP 0x00100000

struct gw_mount_attr { uint64_t attr_set, attr_clr, propagation, userns_fd; };

int spawn_idmap(int argc, char **argv) {
    struct spawn_options o;
    memset(&o, 0, sizeof o);
    if (argc != 6 || strcmp(argv[2], "--map") != 0) die("idmap needs --map BASE:COUNT SRC DST");
    parse_idmap(argv[3], &o);
    const char *src = argv[4], *dst = argv[5];
    if (src[0] != '/' || dst[0] != '/') die("idmap needs absolute paths");

    int ready[2];
    if (pipe2(ready, O_CLOEXEC) < 0) fail("pipe");
    pid_t child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
        // Holds the namespace until the parent has taken its map; then EOF ends it.
        close(ready[1]);
        if (unshare(CLONE_NEWUSER) < 0) _exit(1);
        char c;
        if (read(ready[0], &c, 1) < 0) {}
        _exit(0);
    }
    close(ready[0]);
    // The child has unshared once its user namespace differs from ours.
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/user", child);
    int userns = -1;
    for (int tries = 0; tries < 2000 && userns < 0; tries++) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0) fail("open %s", path);
        int self = open("/proc/self/ns/user", O_RDONLY | O_CLOEXEC);
        struct stat a, b;
        if (self >= 0 && fstat(fd, &a) == 0 && fstat(self, &b) == 0 && a.st_ino != b.st_ino) userns = fd;
        else { close(fd); usleep(500); }
        if (self >= 0) close(self);
        int status;
        if (userns < 0 && waitpid(child, &status, WNOHANG) == child) die("the helper could not make a user namespace");
    }
    if (userns < 0) die("the helper's user namespace did not appear");
    write_idmap(child, o.userns_base, o.userns_count);

    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, GW_OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC);
    if (tree < 0) fail("open_tree %s", src);
    struct gw_mount_attr attr = { .attr_set = GW_MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns };
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
        fail("idmapping %s (does its file system support idmapped mounts?)", src);
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, GW_MOVE_MOUNT_F_EMPTY_PATH) < 0)
        fail("attaching the idmapped %s at %s", src, dst);
    close(ready[1]);
    waitpid(child, NULL, 0);
    return 0;
}
