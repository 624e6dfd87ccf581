#ifndef CGW_UAPI_H
#define CGW_UAPI_H
// Kernel uapi that Debian 12's 6.1 headers lack. Values are copied from Linux's
// include/uapi/linux/userfaultfd.h and include/uapi/linux/fs.h (6.7+); each block is
// guarded so newer headers win when present.
//
// We deliberately do NOT include <linux/fs.h>: it pulls in <linux/mount.h>, whose MS_*
// macros clash with glibc's <sys/mount.h> enums in modules that import both (Runtime).
// The consequence: a translation unit that includes <linux/fs.h> from a 6.7+ tree AFTER
// this header gets duplicate struct definitions; include <linux/fs.h> first if you need it.

#include <stdint.h>
#include <linux/types.h>
#include <linux/userfaultfd.h>

// ---- userfaultfd(2) flags and UFFDIO_API feature bits ----------------------------------
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
// Write-protect faults are resolved by the kernel itself (no handler thread needed); the
// "written" state is then read back with PAGEMAP_SCAN. This is what replaces soft-dirty.
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
// /dev/userfaultfd (6.1+): an alternative to the syscall where seccomp blocks it.
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

// ---- PAGEMAP_SCAN (Linux 6.7+, ioctl on /proc/PID/pagemap) ----------------------------
#ifndef PAGEMAP_SCAN
// Categories: used in the masks of pm_scan_arg and reported in page_region.categories.
#define PAGE_IS_WPALLOWED (1 << 0)  // VMA registered for async uffd-wp (per VMA)
#define PAGE_IS_WRITTEN (1 << 1)    // no uffd-wp bit (6.18: also empty ptes in uffd-wp VMAs)
#define PAGE_IS_FILE (1 << 2)
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_SWAPPED (1 << 4)    // also set for uffd-wp markers on empty ptes
#define PAGE_IS_PFNZERO (1 << 5)
#define PAGE_IS_HUGE (1 << 6)
#define PAGE_IS_SOFT_DIRTY (1 << 7)

struct page_region {
    __u64 start;
    __u64 end;  // exclusive
    __u64 categories;
};

// Write-protect the pages that matched (atomically with reporting them).
#define PM_SCAN_WP_MATCHING (1 << 0)
// Fail with EPERM instead of silently skipping VMAs not registered for async uffd-wp.
#define PM_SCAN_CHECK_WPASYNC (1 << 1)

struct pm_scan_arg {
    __u64 size;       // sizeof(struct pm_scan_arg)
    __u64 flags;      // PM_SCAN_*
    __u64 start;      // inclusive, page aligned
    __u64 end;        // exclusive
    __u64 walk_end;   // out: where the walk stopped (STALE in some cases, see cgw_pagemap_scan)
    __u64 vec;        // struct page_region *
    __u64 vec_len;
    __u64 max_pages;  // 0 = unlimited
    __u64 category_inverted;
    __u64 category_mask;        // all of these (after inversion)
    __u64 category_anyof_mask;  // at least one of these
    __u64 return_mask;          // categories to report
};

#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#endif  // PAGEMAP_SCAN

// 6.14+ (guard regions); harmless to ask for on older kernels, they never report it.
#ifndef PAGE_IS_GUARD
#define PAGE_IS_GUARD (1 << 8)
#endif

// The kernel fills at most this many regions per internal walk chunk; when more come back,
// walk_end may be stale (see cgw_pagemap_scan).
#define CGW_PAGEMAP_SCAN_KERNEL_BATCH 512

#endif  // CGW_UAPI_H
