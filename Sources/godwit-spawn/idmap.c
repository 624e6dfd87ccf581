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
#include <stdint.h>
#include <stdio.h>
#include <string.h>
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

    // hold: parent -> child, its EOF ends the child. made: child -> parent, one byte once
    // the child has its own user namespace (readiness told, not polled).
    int hold[2], made[2];
    if (pipe2(hold, O_CLOEXEC) < 0 || pipe2(made, O_CLOEXEC) < 0) fail("pipe");
    pid_t child = fork();
    if (child < 0) fail("fork");
    if (child == 0) {
        close(hold[1]);
        close(made[0]);
        if (unshare(CLONE_NEWUSER) < 0) _exit(1);
        if (write(made[1], "u", 1) != 1) _exit(1);
        char c;
        if (read(hold[0], &c, 1) < 0) {}
        _exit(0);
    }
    close(hold[0]);
    close(made[1]);
    char c;
    if (read(made[0], &c, 1) != 1) die("the helper could not make a user namespace");
    close(made[0]);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/ns/user", child);
    int userns = open(path, O_RDONLY | O_CLOEXEC);
    if (userns < 0) fail("open %s", path);
    write_idmap(child, o.userns_base, o.userns_count);

    int tree = (int)syscall(SYS_open_tree, AT_FDCWD, src, GW_OPEN_TREE_CLONE | AT_RECURSIVE | O_CLOEXEC);
    if (tree < 0) fail("open_tree %s", src);
    struct gw_mount_attr attr = { .attr_set = GW_MOUNT_ATTR_IDMAP, .userns_fd = (uint64_t)userns };
    if (syscall(SYS_mount_setattr, tree, "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) < 0)
        fail("idmapping %s (does its file system support idmapped mounts?)", src);
    if (syscall(SYS_move_mount, tree, "", AT_FDCWD, dst, GW_MOVE_MOUNT_F_EMPTY_PATH) < 0)
        fail("attaching the idmapped %s at %s", src, dst);
    close(hold[1]);
    waitpid(child, NULL, 0);
    return 0;
}
