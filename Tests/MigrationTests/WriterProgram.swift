import Foundation
import GodwitCore

/// A static C memory writer for the end-to-end tests (until the project's memtouch
/// workload is settled): its pages have contents that are a pure function of (page,
/// generation), so it can verify all of its memory after a move, and it keeps writing
/// while pre-copy runs.
///
///   gwwriter SIZE_MIB RESERVE_MIB PAGES_PER_TICK TICK_US FORK [NO_UFFD [COMPRESSIBLE]]
///
/// Maps RESERVE_MIB (>= SIZE_MIB) of private anonymous memory and touches only the first
/// SIZE_MIB (a sparse mapping). Every tick it rewrites PAGES_PER_TICK pages (0 = idle: it
/// sleeps and writes nothing at all) and writes its tick counter to /tmp/counter.<pid>.
/// SIGUSR1: verify every page, write "ok <pages> <ticks> <max gap µs>" or "bad <page>" to
/// /tmp/verify.<pid>. FORK=1: a child does the same on its own copy. NO_UFFD=1: a seccomp
/// filter makes userfaultfd(2) fail with EPERM (as container profiles do). COMPRESSIBLE=1:
/// only a page's first word is random, the others count up (zstd shrinks such pages ~50×;
/// the default pattern doesn't shrink at all). pid = as seen inside.
/// The max gap is the longest CLOCK_REALTIME interval between two loop iterations: across a
/// move it is the pause the application saw (CLOCK_MONOTONIC would hide it: CRIU restores
/// into a time namespace that continues from the dump).
enum WriterProgram {
    static let source = #"""
    #define _GNU_SOURCE
    #include <errno.h>
    #include <fcntl.h>
    #include <linux/filter.h>
    #include <linux/seccomp.h>
    #include <stddef.h>
    #include <sys/prctl.h>
    #include <sys/syscall.h>
    #include <signal.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <time.h>
    #include <unistd.h>

    static volatile sig_atomic_t want_verify = 0, want_exit = 0;
    static void on_usr1(int s) { (void)s; want_verify = 1; }
    static void on_term(int s) { (void)s; want_exit = 1; }

    static inline uint64_t mix64(uint64_t x) {
        x += 0x9e3779b97f4a7c15ULL;
        x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
        x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
        return x ^ (x >> 31);
    }

    static uint64_t *mem;
    static uint32_t *gen;
    static size_t pages;
    static const size_t words = 4096 / 8;
    static int compressible = 0;

    static inline uint64_t word(uint64_t base, size_t k) {
        return compressible ? (k ? k : base) : base ^ (k * 0x9e3779b97f4a7c15ULL);
    }

    static void fill(size_t p) {
        uint64_t base = mix64(((uint64_t)p << 32) ^ gen[p] ^ (uint64_t)getpid() << 20);
        uint64_t *w = mem + p * words;
        for (size_t k = 0; k < words; k++) w[k] = word(base, k);
    }

    static long check(void) {
        for (size_t p = 0; p < pages; p++) {
            uint64_t base = mix64(((uint64_t)p << 32) ^ gen[p] ^ (uint64_t)getpid() << 20);
            uint64_t *w = mem + p * words;
            for (size_t k = 0; k < words; k++)
                if (w[k] != word(base, k)) return (long)p;
        }
        return -1;
    }

    static void put(const char *prefix, const char *text) {
        char path[64], tmp[72];
        snprintf(path, sizeof path, "/tmp/%s.%d", prefix, (int)getpid());
        snprintf(tmp, sizeof tmp, "%s.tmp", path);
        int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd < 0) return;
        if (write(fd, text, strlen(text)) < 0) {}
        close(fd);
        rename(tmp, path);
    }

    static int block_userfaultfd(void) {
        struct sock_filter f[] = {
            BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
            BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_userfaultfd, 0, 1),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EPERM & SECCOMP_RET_DATA)),
            BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        };
        struct sock_fprog prog = { sizeof f / sizeof f[0], f };
        if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) return -1;
        return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog);
    }

    int main(int argc, char **argv) {
        if (argc < 6) return 2;
        size_t size = strtoul(argv[1], 0, 10) << 20, reserve = strtoul(argv[2], 0, 10) << 20;
        long per_tick = strtol(argv[3], 0, 10), tick_us = strtol(argv[4], 0, 10);
        int do_fork = atoi(argv[5]);
        if (reserve < size) reserve = size;
        if (argc > 6 && atoi(argv[6]) && block_userfaultfd()) return 2;
        compressible = argc > 7 && atoi(argv[7]);
        for (int fd = 3; fd < 1024; fd++) close(fd);
        signal(SIGUSR1, on_usr1);
        signal(SIGTERM, on_term);
        pages = size / 4096;
        mem = mmap(0, reserve, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        gen = mmap(0, pages * 4 + 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED || gen == MAP_FAILED) return 2;
        if (do_fork && fork() == 0) { /* the child refills its copy with its own pid's pattern */ }
        for (size_t p = 0; p < pages; p++) fill(p);
        uint64_t ticks = 0, max_gap_us = 0, last_us = 0;
        size_t cursor = 0;
        char line[96];
        struct timespec ts = { tick_us / 1000000, (tick_us % 1000000) * 1000 };
        for (;;) {
            if (want_exit) return 0;
            if (want_verify) {
                want_verify = 0;
                long bad = check();
                if (bad < 0) snprintf(line, sizeof line, "ok %zu %llu %llu\n", pages, (unsigned long long)ticks,
                                      (unsigned long long)max_gap_us);
                else snprintf(line, sizeof line, "bad %ld\n", bad);
                put("verify", line);
            }
            if (per_tick > 0) {
                for (long i = 0; i < per_tick; i++) {
                    cursor = (cursor + 7) % pages;
                    gen[cursor]++;
                    fill(cursor);
                }
                ticks++;
                snprintf(line, sizeof line, "%llu\n", (unsigned long long)ticks);
                put("counter", line);
            }
            nanosleep(&ts, 0);
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            uint64_t now_us = (uint64_t)now.tv_sec * 1000000 + now.tv_nsec / 1000;
            if (last_us && now_us - last_us > max_gap_us) max_gap_us = now_us - last_us;
            last_us = now_us;
        }
    }
    """#

    /// Compiles the program statically into `directory` (cached per test process).
    static func build(into directory: String) throws -> String {
        let src = directory + "/gwwriter.c", bin = directory + "/gwwriter"
        try source.write(toFile: src, atomically: true, encoding: .utf8)
        try Command.check(["cc", "-static", "-O2", "-o", bin, src], hint: "needs a C compiler and static glibc (libc6-dev)")
        return bin
    }
}
