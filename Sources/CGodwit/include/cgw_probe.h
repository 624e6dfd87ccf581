#ifndef CGW_PROBE_H
#define CGW_PROBE_H
// A tiny child process to measure memory-tracking features on: it owns N private
// anonymous pages and writes into them only when told to, so a tracker's answer can be
// compared with the truth. Forked (not exec'd) from a multithreaded process, so the child
// uses only async-signal-safe syscalls.
//
// Page layout: bytes 8..15 of page i hold CGW_PROBE_MAGIC ^ i (written once at start);
// a write command increments byte 0 of the page.
//
// Protocol: the parent writes 8-byte commands to cmd_fd; the child answers each with an
// 8-byte ack on ack_fd (its first message, before any command, is the mapping address).

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CGW_PROBE_MAGIC 0x60D817C0FFEE0000ULL
#define CGW_PROBE_ACK_ERROR UINT64_MAX  // (Swift: UInt64.max)

// Command words: opcode in the top byte.
#define CGW_PROBE_OP_WRITE 1ULL    // bits 0..31 page index; ack = 1
#define CGW_PROBE_OP_STRIDE 2ULL   // bits 0..23 first, 24..47 count, 48..55 stride; ack = pages written
#define CGW_PROBE_OP_PING 3ULL     // ack = number of commands handled so far
#define CGW_PROBE_OP_EXIT 4ULL     // child _exits(0) without acking
#define CGW_PROBE_OP_DROP 5ULL     // bits 0..31 page index: MADV_DONTNEED it (empty pte); ack = 1
#define CGW_PROBE_OP_SIGNALS 6ULL  // ack = number of SIGUSR1 received (SA_RESTART handler)

static inline uint64_t cgw_probe_cmd_write(uint32_t page) {
    return (CGW_PROBE_OP_WRITE << 56) | page;
}
static inline uint64_t cgw_probe_cmd_stride(uint32_t first, uint32_t count, uint8_t stride) {
    return (CGW_PROBE_OP_STRIDE << 56) | ((uint64_t)stride << 48) |
           ((uint64_t)(count & 0xFFFFFF) << 24) | (first & 0xFFFFFF);
}
static inline uint64_t cgw_probe_cmd_drop(uint32_t page) {
    return (CGW_PROBE_OP_DROP << 56) | page;
}
static inline uint64_t cgw_probe_cmd_signals(void) { return CGW_PROBE_OP_SIGNALS << 56; }
static inline uint64_t cgw_probe_cmd_ping(void) { return CGW_PROBE_OP_PING << 56; }
static inline uint64_t cgw_probe_cmd_exit(void) { return CGW_PROBE_OP_EXIT << 56; }

struct cgw_probe_target {
    pid_t pid;
    uint64_t base;   // address of the page block in the child
    size_t pages;
    int cmd_fd;      // ours: write commands here
    int ack_fd;      // ours: read acks here
    int child_cmd_fd;  // the same pipes' other ends, as numbered inside the child
    int child_ack_fd;
};

// Forks the child (PR_SET_PDEATHSIG SIGKILL, all other inherited fds closed), waits up to
// 2 s for it to report its mapping. Returns 0 or -errno; on failure nothing is left behind.
// Note: PDEATHSIG fires when the forking THREAD exits, so spawn from a thread that lives
// at least as long as the child, or kill the child yourself (cgw_probe_target_destroy).
int cgw_spawn_probe_target(size_t pages, struct cgw_probe_target *out);
// Sends one command and waits up to timeout_ms for its ack. Returns 0, -ETIMEDOUT, -EPIPE
// (child gone) or -errno. CGW_PROBE_OP_EXIT returns 0 without waiting.
int cgw_probe_command(const struct cgw_probe_target *t, uint64_t cmd, uint64_t *ack, int timeout_ms);
// Sends a command without waiting for the ack (for tests that stop the child first).
int cgw_probe_send(const struct cgw_probe_target *t, uint64_t cmd);
// Waits up to timeout_ms for one ack.
int cgw_probe_read_ack(const struct cgw_probe_target *t, uint64_t *ack, int timeout_ms);
// SIGKILL + waitpid + close our pipe ends. Idempotent (pid/fds set to -1).
void cgw_probe_target_destroy(struct cgw_probe_target *t);

#endif  // CGW_PROBE_H
