#ifndef CGODWIT_H
#define CGODWIT_H
// C shim: what Swift can't call directly. Each declaration documents its kernel contract.
//   cgw_uapi.h    kernel uapi newer than Debian 12's headers (uffd features, PAGEMAP_SCAN)
//   cgw_memory.h  pidfd, userfaultfd, PAGEMAP_SCAN, process_vm_readv wrappers
//   cgw_ptrace.h  syscall injection into another process (x86_64)
//   cgw_probe.h   a forked child with N pages, driven over pipes, for probes and tests
#include "cgw_uapi.h"
#include "cgw_memory.h"
#include "cgw_ptrace.h"
#include "cgw_probe.h"
#endif
