// The environment a distribution's systemd boots in, shaped so that what it creates can be
// checkpointed by CRIU (docs/system-containers.md lists each choice and its trade-off).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spawn.h"

static void mnt(const char *src, const char *dst, const char *type, unsigned long flags, const char *data) {
    if (mount(src, dst, type, flags, data) < 0) fail("mount %s on %s", type ? type : src, dst);
}

static void mkdirs(const char *path, mode_t mode) {
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; ; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, mode) < 0 && errno != EEXIST) fail("mkdir %s", buf);
            if (c == 0) break;
            *p = c;
        }
    }
}

// Kernel file systems systemd mounts when it finds them usable and that CRIU 4.2 can't
// dump (hugetlbfs, configfs: not in criu/filesystems.c) or that would hand the container
// the host's kernel (debugfs, tracefs, fusectl, binfmt_misc). Masked at runtime, as
// `systemctl mask --runtime` would: /run is ours and empty, so the image stays unmodified.
static const char *masked_units[] = {
    "dev-hugepages.mount", "sys-kernel-config.mount", "sys-kernel-debug.mount",
    "sys-kernel-tracing.mount", "sys-fs-fuse-connections.mount",
    "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "systemd-binfmt.service", "systemd-modules-load.service",
};

static void mask_units(void) {
    mkdirs("/run/systemd/system", 0755);
    for (size_t i = 0; i < sizeof masked_units / sizeof masked_units[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "/run/systemd/system/%s", masked_units[i]);
        if (symlink("/dev/null", path) < 0 && errno != EEXIST) fail("mask %s", masked_units[i]);
    }
}

// /proc/sys would let the container's systemd-sysctl retune the host's kernel: read-only,
// as LXC's proc:mixed, except the network namespace's own /proc/sys/net.
static void protect_proc(void) {
    mnt("/proc/sys", "/proc/sys", NULL, MS_BIND | MS_REC, NULL);
    mnt("/proc/sys/net", "/proc/sys/net", NULL, MS_BIND | MS_REC, NULL);
    mnt(NULL, "/proc/sys", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    // Kernels without CONFIG_MAGIC_SYSRQ (this machine kind) have no such file.
    if (access("/proc/sysrq-trigger", F_OK) == 0) {
        mnt("/proc/sysrq-trigger", "/proc/sysrq-trigger", NULL, MS_BIND, NULL);
        mnt(NULL, "/proc/sysrq-trigger", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    }
    // The host kernel's memory, timers, scheduler and keys, as Docker and Podman mask them:
    // an empty read-only file on the container's /dev tmpfs (which CRIU dumps) bound over
    // each. Not /dev/null: in a user namespace that is a bind of the host's node, and a
    // bind of a bind of an external mount is more than CRIU resolves.
    static const char *masked[] = {"/proc/kcore", "/proc/keys", "/proc/timer_list", "/proc/sched_debug",
                                   "/proc/latency_stats"};
    for (size_t i = 0; i < sizeof masked / sizeof masked[0]; i++) {
        if (access(masked[i], F_OK) != 0) continue;
        mnt(EMPTY_FILE, masked[i], NULL, MS_BIND, NULL);
        mnt(NULL, masked[i], NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NOEXEC, NULL);
    }
}

void setup_system(void) {
    mnt("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV | MS_STRICTATIME, "mode=755,size=20%");
    mkdirs("/run/lock", 01777);
    mnt("tmpfs", "/tmp", "tmpfs", MS_NOSUID | MS_NODEV | MS_STRICTATIME, "mode=1777,size=50%");
    mask_units();
    protect_proc();
}
