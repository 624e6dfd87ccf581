// What confines root in a container beyond its namespaces: the id map of its user
// namespace, the capability bounding set and one seccomp filter. docs/unprivileged.md
// gives the defaults and why each is there; the caller (Runtime's SecurityProfile) decides
// what goes in, this file only applies it, the same way for run and exec.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "spawn.h"

// "BASE:COUNT" with both in range and the end below 2^32-1 (the kernel's invalid id).
void parse_idmap(const char *text, struct spawn_options *o) {
    char *end;
    errno = 0;
    unsigned long long base = strtoull(text, &end, 10);
    if (errno || end == text || *end != ':') die("--userns wants BASE:COUNT, not %s", text);
    const char *c = end + 1;
    unsigned long long count = strtoull(c, &end, 10);
    if (errno || end == c || *end || count == 0 || base == 0 || base + count > 0xFFFFFFFFull)
        die("--userns %s: BASE and COUNT must be positive and end below 4294967295", text);
    o->userns_base = (unsigned)base;
    o->userns_count = (unsigned)count;
}

// From the parent (root in the host's user namespace), which may write any map.
void write_idmap(pid_t pid, unsigned base, unsigned count) {
    char path[64], map[64];
    snprintf(map, sizeof map, "0 %u %u\n", base, count);
    snprintf(path, sizeof path, "/proc/%d/uid_map", pid);
    write_string(path, map);
    snprintf(path, sizeof path, "/proc/%d/gid_map", pid);
    write_string(path, map);
}

// Root of the user namespace: uid and gid 0 inside, the map's base on the host. Caps stay
// (the kernel keeps them when euid becomes the namespace's root).
void become_namespace_root(void) {
    if (setresgid(0, 0, 0) < 0) fail("setresgid 0 in the user namespace");
    if (setresuid(0, 0, 0) < 0) fail("setresuid 0 in the user namespace");
    if (setgroups(0, NULL) < 0) fail("setgroups");
}

void drop_capabilities(const struct spawn_options *o) {
    for (int i = 0; i < o->ncapdrop; i++)
        if (prctl(PR_CAPBSET_DROP, o->capdrop[i], 0, 0, 0) < 0 && errno != EINVAL)
            fail("dropping capability %d from the bounding set", o->capdrop[i]);
}

// The system profile's rules (see system.c): namespace creation fails with EPERM, which
// systemd takes for "containerized execution"; bpf() fails (a cgroup program would not
// survive a move); clone3 passes its flags in memory, out of seccomp's reach: ENOSYS, so
// libc falls back to clone.
#define NS_FLAGS (CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | \
                  CLONE_NEWNET | CLONE_NEWCGROUP | 0x00000080 /* CLONE_NEWTIME */)
#define X32_SYSCALL_BIT 0x40000000
#define MAX_FILTER (16 + MAX_DENY + 16)

// One filter: foreign ABIs (i386, x32) fail with ENOSYS, as they would get round every
// rule below; each denied syscall fails with EPERM (LXC's and Docker's answer); then the
// system profile's rules. Without NO_NEW_PRIVS: we hold CAP_SYS_ADMIN (in the container's
// user namespace when it has one), and setuid programs and systemd must keep working.
void install_seccomp(const struct spawn_options *o) {
    if (o->ndeny == 0 && !o->system) return;
    struct sock_filter f[MAX_FILTER];
    unsigned short n = 0;
#define PUT(x) (f[n++] = (struct sock_filter)x)
    PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)));
    PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0));
    PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS));
    PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)));
    PUT(BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, X32_SYSCALL_BIT, 0, 1));
    PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS));
    for (int i = 0; i < o->ndeny; i++) {
        PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)o->deny[i], 0, 1));
        PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM));
    }
    if (o->system) {
        PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone3, 0, 1));
        PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS));
        PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_bpf, 0, 1));
        PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM));
        PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_clone, 1, 0));
        PUT(BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_unshare, 0, 3));
        // clone's and unshare's flags are both arg 0; the namespace bits are in its low word.
        PUT(BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0])));
        PUT(BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, NS_FLAGS, 0, 1));
        PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM));
    }
    PUT(BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW));
#undef PUT
    struct sock_fprog prog = { .len = n, .filter = f };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) fail("seccomp");
}

// Last step before exec in both run and exec, so nothing of ours is refused by the filter.
void apply_confinement(const struct spawn_options *o) {
    drop_capabilities(o);
    if (o->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) fail("no_new_privs");
    install_seccomp(o);
}
