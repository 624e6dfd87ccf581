// confine-probe: tries, as root inside a container, what an unprivileged container's root
// must not be able to do, and prints one "what=result" line each (result: ok, or the errno
// name). Static, so it runs in the busybox image and in any distribution's.
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

static const char *name(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOSYS: return "ENOSYS";
    case EINVAL: return "EINVAL";
    case EFAULT: return "EFAULT";
    case EBADF: return "EBADF";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    default: return strerror(e);
    }
}

static void report(const char *what, long rc) {
    printf("%s=%s\n", what, rc == 0 ? "ok" : name(errno));
}

int main(void) {
    errno = 0;
    report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
    report("init_module", syscall(SYS_init_module, NULL, 0, ""));
    report("finit_module", syscall(SYS_finit_module, -1, "", 0));
    report("delete_module", syscall(SYS_delete_module, "godwit_probe", 0));
    report("open_by_handle_at", syscall(SYS_open_by_handle_at, -1, NULL, 0));
    report("keyctl", syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0));
    report("add_key", syscall(SYS_add_key, "user", "godwit-probe", "x", 1, -3));
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    report("clock_settime", clock_settime(CLOCK_REALTIME, &now));
    // The hostname it already has: the call is what is tested, not a new name.
    char host[65] = {0};
    gethostname(host, sizeof host - 1);
    report("sethostname", sethostname(host, strlen(host)));
    unlink("/tmp/.confine-probe-blk");
    long rc = mknod("/tmp/.confine-probe-blk", S_IFBLK | 0600, makedev(8, 0));
    report("mknod_block", rc);
    if (rc == 0) unlink("/tmp/.confine-probe-blk");
    return 0;
}
