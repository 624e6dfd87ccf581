#define _GNU_SOURCE
#include "cgw_memory.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

// Raw numbers (x86_64 and arm64 share these: they were added after the tables unified).
#ifndef __NR_pidfd_send_signal
#define __NR_pidfd_send_signal 424
#endif
#ifndef __NR_pidfd_open
#define __NR_pidfd_open 434
#endif
#ifndef __NR_pidfd_getfd
#define __NR_pidfd_getfd 438
#endif

static inline long neg_errno(long rc) { return rc < 0 ? -errno : rc; }

int cgw_pidfd_open(pid_t pid) { return (int)neg_errno(syscall(__NR_pidfd_open, pid, 0)); }

int cgw_pidfd_getfd(int pidfd, int targetfd) {
    return (int)neg_errno(syscall(__NR_pidfd_getfd, pidfd, targetfd, 0));
}

int cgw_pidfd_send_signal(int pidfd, int sig) {
    return (int)neg_errno(syscall(__NR_pidfd_send_signal, pidfd, sig, NULL, 0));
}

int cgw_userfaultfd(int flags) { return (int)neg_errno(syscall(__NR_userfaultfd, flags)); }

int cgw_userfaultfd_dev(int flags) {
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev < 0) return -errno;
    int fd = ioctl(dev, USERFAULTFD_IOC_NEW, flags);
    int err = errno;
    close(dev);
    return fd < 0 ? -err : fd;
}

int cgw_uffd_api(int uffd, uint64_t features, uint64_t *features_out, uint64_t *ioctls_out) {
    struct uffdio_api api = {.api = UFFD_API, .features = features};
    if (ioctl(uffd, UFFDIO_API, &api) < 0) return -errno;
    if (features_out) *features_out = api.features;
    if (ioctls_out) *ioctls_out = api.ioctls;
    return 0;
}

int cgw_uffd_register(int uffd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls_out) {
    struct uffdio_register reg = {.range = {.start = start, .len = len}, .mode = mode};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0) return -errno;
    if (ioctls_out) *ioctls_out = reg.ioctls;
    return 0;
}

int cgw_uffd_unregister(int uffd, uint64_t start, uint64_t len) {
    struct uffdio_range range = {.start = start, .len = len};
    return ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

int cgw_uffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect) {
    struct uffdio_writeprotect wp = {
        .range = {.start = start, .len = len},
        .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
    };
    return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

long cgw_pagemap_scan(int pagemap_fd, struct pm_scan_arg *arg) {
    arg->size = sizeof(*arg);
    // walk_end is only written when the walk stops early; start from a known value so a
    // caller never mistakes the previous call's walk_end for this one's.
    arg->walk_end = 0;
    long n = ioctl(pagemap_fd, PAGEMAP_SCAN, arg);
    return n < 0 ? -errno : n;
}

uint64_t cgw_pagemap_scan_next_start(const struct pm_scan_arg *arg, long n, uint64_t vec_len) {
    if (n < 0) return 0;
    // Fewer regions than room for: the walk reached arg->end (walk_end may be stale).
    if ((uint64_t)n < vec_len) return 0;
    uint64_t next = arg->walk_end;
    if (n > 0) {
        const struct page_region *vec = (const struct page_region *)(uintptr_t)arg->vec;
        uint64_t last_end = vec[n - 1].end;
        if (last_end > next) next = last_end;
    }
    return next >= arg->end ? 0 : next;
}

long cgw_process_vm_read(pid_t pid, void *local, uint64_t remote, size_t len) {
    struct iovec l = {.iov_base = local, .iov_len = len};
    struct iovec r = {.iov_base = (void *)(uintptr_t)remote, .iov_len = len};
    return neg_errno(process_vm_readv(pid, &l, 1, &r, 1, 0));
}

long cgw_proc_mem_read(int mem_fd, void *local, uint64_t remote, size_t len) {
    return neg_errno(pread(mem_fd, local, len, (off_t)remote));
}

pid_t cgw_gettid(void) { return (pid_t)syscall(__NR_gettid); }

int cgw_tgkill(pid_t tgid, pid_t tid, int sig) {
    return (int)neg_errno(syscall(__NR_tgkill, tgid, tid, sig));
}
