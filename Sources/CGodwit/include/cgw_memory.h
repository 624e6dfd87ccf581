#ifndef CGW_MEMORY_H
#define CGW_MEMORY_H
// Syscalls and ioctls for dirty tracking that Swift can't call directly (variadic
// syscall(2), ioctl request macros built with _IOWR). Every function returns >= 0 on
// success and -errno on failure, and never touches errno-dependent global state after.

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "cgw_uapi.h"

// ---- pidfd (raw syscall numbers: glibc 2.36 wrappers are not in every libc we meet) ----

// pidfd_open(2): a stable handle on a process (no PID reuse races). Returns the fd.
int cgw_pidfd_open(pid_t pid);
// pidfd_getfd(2): duplicates the target's descriptor `targetfd` into this process
// (O_CLOEXEC set). Needs ptrace-attach rights over the target (root). Returns the new fd.
int cgw_pidfd_getfd(int pidfd, int targetfd);
// pidfd_send_signal(2) with no siginfo.
int cgw_pidfd_send_signal(int pidfd, int sig);

// ---- userfaultfd ------------------------------------------------------------------------

// userfaultfd(2) in THIS process, e.g. userfaultfd(O_CLOEXEC|O_NONBLOCK|UFFD_USER_MODE_ONLY).
int cgw_userfaultfd(int flags);
// The same through /dev/userfaultfd (USERFAULTFD_IOC_NEW), for hosts whose seccomp policy
// blocks the syscall. `flags` as for the syscall.
int cgw_userfaultfd_dev(int flags);
// UFFDIO_API. Can succeed only once per uffd (a failed call leaves it unconfigured).
// `features` is what to enable (the kernel adds WP_UNPOPULATED to WP_ASYNC by itself).
// On success *features_out is everything this kernel SUPPORTS, not what was enabled, and
// *ioctls_out the ioctls the fd accepts.
int cgw_uffd_api(int uffd, uint64_t features, uint64_t *features_out, uint64_t *ioctls_out);
// UFFDIO_REGISTER of [start, start+len) with `mode` (UFFDIO_REGISTER_MODE_WP, ...).
// The range must be fully covered by VMAs. *ioctls_out (optional): ioctls the range allows.
int cgw_uffd_register(int uffd, uint64_t start, uint64_t len, uint64_t mode, uint64_t *ioctls_out);
int cgw_uffd_unregister(int uffd, uint64_t start, uint64_t len);
// UFFDIO_WRITEPROTECT. With WP_UNPOPULATED this installs markers on empty ptes, which
// CRIU later dumps as zero pages: prefer a protecting PAGEMAP_SCAN (marker-free).
int cgw_uffd_writeprotect(int uffd, uint64_t start, uint64_t len, int protect);

// ---- PAGEMAP_SCAN -----------------------------------------------------------------------

// One PAGEMAP_SCAN ioctl on an open /proc/PID/pagemap (read-only is enough, also for
// another process). `arg->size` is filled in here. Returns the number of regions written
// to arg->vec, or -errno (-ENOTTY: kernel older than 6.7; -EPERM: PM_SCAN_CHECK_WPASYNC
// met a VMA not registered for async uffd-wp).
//
// Resuming: the kernel walks in chunks of CGW_PAGEMAP_SCAN_KERNEL_BATCH regions and only
// updates walk_end when a chunk ENDS EARLY, so after a later chunk finishes the walk,
// walk_end still points at an earlier chunk boundary. Rule: a result with fewer regions
// than vec_len means the walk reached arg->end; otherwise continue at
// max(walk_end, end of the last region). cgw_pagemap_scan_next_start() applies it.
long cgw_pagemap_scan(int pagemap_fd, struct pm_scan_arg *arg);
// After a cgw_pagemap_scan that returned n regions for a request of vec_len: the address
// to continue from, or 0 when the walk is complete. Assumes max_pages == 0 (with a page
// budget, a full vector can also mean the budget ran out: the caller decides then).
uint64_t cgw_pagemap_scan_next_start(const struct pm_scan_arg *arg, long n, uint64_t vec_len);

// ---- reading another process's memory ---------------------------------------------------

// process_vm_readv(2) of one contiguous remote range into `local`. Returns bytes read
// (may be short at an unmapped page) or -errno.
long cgw_process_vm_read(pid_t pid, void *local, uint64_t remote, size_t len);
// pread(2) of /proc/PID/mem (works where process_vm_readv can't, e.g. some special
// mappings, because it uses FOLL_FORCE). `mem_fd` is an open /proc/PID/mem.
long cgw_proc_mem_read(int mem_fd, void *local, uint64_t remote, size_t len);

// ---- small things Swift can't spell ----------------------------------------------------

// The calling thread's kernel TID (ptrace requests must come from the attaching thread).
pid_t cgw_gettid(void);
// tgkill(2).
int cgw_tgkill(pid_t tgid, pid_t tid, int sig);

#endif  // CGW_MEMORY_H
