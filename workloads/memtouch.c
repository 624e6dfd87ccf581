/*
 * memtouch: the test program of the FOSDEM 2018 CRIU live-migration talk ("Test Case"
 * slide), as a static libc-only program that runs inside busybox containers.
 *
 *   1. allocate --size MiB (private anonymous mmap) and touch all of it with a
 *      deterministic pattern; report ready
 *   2. loop: sleep --sleep-us (nanosleep), read CLOCK_REALTIME; the gap between two
 *      consecutive clock reads over --threshold-us is a missed sleep. Each iteration
 *      writes the next page of its pattern (every page, every 2nd, every 4th, none).
 *
 * Gaps use CLOCK_REALTIME: after a CRIU restore the process lives in a new time
 * namespace whose CLOCK_MONOTONIC continues from its value at dump, hiding the downtime.
 *
 * Verification: page p with write generation g has content that is a pure function of
 * (p, g, mode); the per-page generations live in a separate mapping. Verifying recomputes
 * every word of every page and compares, so any flipped byte is found.
 *
 * Control: SIGUSR1 = verify + write report; SIGTERM/SIGINT = verify, write the final
 * report (also to stdout) and exit 0 (pass) or 1 (fail). --control FIFO accepts the
 * lines "verify" and "stop". Handlers only set flags; the main loop acts.
 * Exit code 2: usage or setup error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_SET_VMA
#define PR_SET_VMA 0x53564d41
#endif
#ifndef PR_SET_VMA_ANON_NAME
#define PR_SET_VMA_ANON_NAME 0
#endif

#define MIB (1024ULL * 1024ULL)
#define PATTERN_SEED 0x6d656d746f756368ULL /* "memtouch" */
#define WORD_STEP 0x9e3779b97f4a7c15ULL

/* ---------------------------------------------------------------- pattern */

/* splitmix64 finalizer. Tests re-implement this to read pages from outside:
 * base(p, g) = mix64(((uint64_t)p << 32) ^ g ^ PATTERN_SEED)
 * word k of a page = base ^ (k * WORD_STEP), where base uses the page's generation for
 * every word (--whole-pages) or only for word 0 (default; other words keep generation 0). */
static inline uint64_t mix64(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static inline uint64_t page_base(uint64_t page, uint32_t gen) {
    return mix64((page << 32) ^ (uint64_t)gen ^ PATTERN_SEED);
}

/* ---------------------------------------------------------------- state */

struct options {
    uint64_t size_mib;
    uint64_t stride;
    uint64_t rate;
    bool whole_pages;
    bool thp;
    uint64_t sleep_us;
    uint64_t threshold_us;
    uint64_t report_interval_ms;
    const char *report_path;
    const char *control_path;
};

#define NBUCKETS 15
static const uint64_t bucket_lt_us[NBUCKETS - 1] = {
    200, 400, 800, 1600, 3200, 6400, 12800, 25600, 51200, 102400, 204800, 409600, 819200, 1000000,
};

#define NRECENT 8
struct gap_event {
    int64_t at_us; /* CLOCK_REALTIME at the end of the gap */
    uint64_t gap_us;
};

struct verification {
    const char *verdict; /* "not-run", "pass", "fail" */
    uint64_t runs;
    uint64_t pages_checked;
    uint64_t bad_pages;
    int64_t first_bad_page;   /* -1: none */
    int64_t first_bad_offset; /* byte offset inside that page; -1: none */
    uint64_t pages_written_distinct;
    int64_t at_us;
    uint64_t duration_us;
};

struct state {
    struct options opt;
    size_t page_size;
    size_t words_per_page;
    uint64_t npages;
    uint64_t *region;
    uint32_t *gen;
    size_t gen_bytes;

    const char *phase; /* "touching", "running", "exited" */
    bool ready;
    int64_t started_at_us;
    int64_t ready_at_us;
    uint64_t touch_us;
    int64_t mono_minus_rt_start; /* CLOCK_MONOTONIC - CLOCK_REALTIME at start, µs */

    uint64_t iterations;
    uint64_t pages_written;
    uint64_t cursor;
    uint64_t missed_sleeps;
    uint64_t missed_time_us;
    uint64_t longest_gap_us;
    int64_t longest_gap_at_us;
    uint64_t clock_went_back;
    uint64_t hist[NBUCKETS];
    struct gap_event recent[NRECENT];
    uint64_t recent_count;
    struct gap_event longest[NRECENT]; /* the longest gaps, longest first */
    uint64_t longest_count;
    double rate_credit;
    uint64_t reports_written;
    bool report_error_shown;

    struct verification ver;
    int control_fd;
    char control_buf[256];
    size_t control_len;
};

static volatile sig_atomic_t g_stop;
static volatile sig_atomic_t g_stop_signal;
static volatile sig_atomic_t g_verify;

static void on_stop(int sig) {
    g_stop = 1;
    g_stop_signal = sig;
}

static void on_verify(int sig) {
    (void)sig;
    g_verify = 1;
}

static int64_t clock_us(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t realtime_us(void) { return clock_us(CLOCK_REALTIME); }
static int64_t monotonic_us(void) { return clock_us(CLOCK_MONOTONIC); }

/* ---------------------------------------------------------------- memory */

static void fill_page(struct state *s, uint64_t p, uint32_t g) {
    uint64_t *w = s->region + p * s->words_per_page;
    uint64_t b = page_base(p, g);
    for (size_t k = 0; k < s->words_per_page; k++)
        w[k] = b ^ ((uint64_t)k * WORD_STEP);
}

static void write_page(struct state *s, uint64_t p) {
    uint32_t g = ++s->gen[p];
    if (s->opt.whole_pages)
        fill_page(s, p, g);
    else
        s->region[p * s->words_per_page] = page_base(p, g);
    s->pages_written++;
}

static void verify(struct state *s) {
    int64_t t0 = realtime_us();
    uint64_t bad = 0, distinct = 0;
    int64_t first = -1, first_off = -1;
    for (uint64_t p = 0; p < s->npages; p++) {
        const uint64_t *w = s->region + p * s->words_per_page;
        uint32_t g = s->gen[p];
        if (g != 0)
            distinct++;
        uint64_t bg = page_base(p, g);
        uint64_t b0 = s->opt.whole_pages ? bg : page_base(p, 0);
        uint64_t diff = w[0] ^ bg;
        for (size_t k = 1; k < s->words_per_page; k++)
            diff |= w[k] ^ b0 ^ ((uint64_t)k * WORD_STEP);
        if (diff == 0)
            continue;
        bad++;
        if (first >= 0)
            continue;
        first = (int64_t)p;
        for (size_t k = 0; k < s->words_per_page; k++) {
            uint64_t expect = (k == 0 ? bg : b0) ^ ((uint64_t)k * WORD_STEP);
            uint64_t d = w[k] ^ expect;
            if (d != 0) { /* little-endian: lowest differing bit is in the lowest byte */
                first_off = (int64_t)(k * 8 + (size_t)(__builtin_ctzll(d) / 8));
                break;
            }
        }
    }
    s->ver.verdict = bad == 0 ? "pass" : "fail";
    s->ver.runs++;
    s->ver.pages_checked = s->npages;
    s->ver.bad_pages = bad;
    s->ver.first_bad_page = first;
    s->ver.first_bad_offset = first_off;
    s->ver.pages_written_distinct = distinct;
    s->ver.at_us = t0;
    s->ver.duration_us = (uint64_t)(realtime_us() - t0);
}

/* ---------------------------------------------------------------- report */

struct jbuf {
    char data[16384];
    size_t len;
    bool overflow;
};

__attribute__((format(printf, 2, 3))) static void jb(struct jbuf *b, const char *fmt, ...) {
    if (b->overflow)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->data + b->len, sizeof b->data - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof b->data - b->len)
        b->overflow = true;
    else
        b->len += (size_t)n;
}

/* ISO 8601 UTC with microseconds, e.g. 2025-01-31T12:00:00.123456Z */
static void iso8601(int64_t us, char *out, size_t n) {
    time_t secs = (time_t)(us / 1000000);
    struct tm tm;
    if (us <= 0 || gmtime_r(&secs, &tm) == NULL) {
        snprintf(out, n, "null");
        return;
    }
    char date[40];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, n, "\"%s.%06" PRId64 "Z\"", date, us % 1000000);
}

static void json_i64_or_null(struct jbuf *b, const char *key, int64_t v, const char *tail) {
    if (v < 0)
        jb(b, "  \"%s\": null%s\n", key, tail);
    else
        jb(b, "  \"%s\": %" PRId64 "%s\n", key, v, tail);
}

static void build_report(struct state *s, struct jbuf *b) {
    int64_t now = realtime_us();
    char iso[64];
    b->len = 0;
    b->overflow = false;
    jb(b, "{\n");
    jb(b, "  \"program\": \"memtouch\",\n  \"format\": 1,\n");
    jb(b, "  \"pid\": %ld,\n", (long)getpid());
    jb(b, "  \"phase\": \"%s\",\n", s->phase);
    jb(b, "  \"ready\": %s,\n", s->ready ? "true" : "false");
    jb(b, "  \"report_at_us\": %" PRId64 ",\n", now);
    jb(b, "  \"started_at_us\": %" PRId64 ",\n", s->started_at_us);
    json_i64_or_null(b, "ready_at_us", s->ready ? s->ready_at_us : -1, ",");
    jb(b, "  \"touch_us\": %" PRIu64 ",\n", s->touch_us);
    jb(b, "  \"size_mib\": %" PRIu64 ",\n", s->opt.size_mib);
    jb(b, "  \"page_size\": %zu,\n", s->page_size);
    jb(b, "  \"pages\": %" PRIu64 ",\n", s->npages);
    jb(b, "  \"region_start\": %" PRIuPTR ",\n", (uintptr_t)s->region);
    jb(b, "  \"region_start_hex\": \"0x%" PRIxPTR "\",\n", (uintptr_t)s->region);
    jb(b, "  \"stride\": %" PRIu64 ",\n", s->opt.stride);
    jb(b, "  \"pattern_pages\": %" PRIu64 ",\n",
       s->opt.stride == 0 ? 0 : (s->npages + s->opt.stride - 1) / s->opt.stride);
    jb(b, "  \"whole_pages\": %s,\n", s->opt.whole_pages ? "true" : "false");
    jb(b, "  \"thp\": %s,\n", s->opt.thp ? "true" : "false");
    jb(b, "  \"rate\": %" PRIu64 ",\n", s->opt.rate);
    jb(b, "  \"sleep_us\": %" PRIu64 ",\n", s->opt.sleep_us);
    jb(b, "  \"threshold_us\": %" PRIu64 ",\n", s->opt.threshold_us);
    jb(b, "  \"clock\": \"CLOCK_REALTIME\",\n");
    jb(b, "  \"iterations\": %" PRIu64 ",\n", s->iterations);
    jb(b, "  \"pages_written\": %" PRIu64 ",\n", s->pages_written);
    jb(b, "  \"missed_sleeps\": %" PRIu64 ",\n", s->missed_sleeps);
    jb(b, "  \"missed_time_us\": %" PRIu64 ",\n", s->missed_time_us);
    jb(b, "  \"longest_gap_us\": %" PRIu64 ",\n", s->longest_gap_us);
    json_i64_or_null(b, "longest_gap_at_us", s->longest_gap_us ? s->longest_gap_at_us : -1, ",");
    iso8601(s->longest_gap_us ? s->longest_gap_at_us : 0, iso, sizeof iso);
    jb(b, "  \"longest_gap_at\": %s,\n", iso);
    jb(b, "  \"clock_went_back\": %" PRIu64 ",\n", s->clock_went_back);
    /* (MONOTONIC - REALTIME) now minus at start: drops by the downtime hidden from
     * CLOCK_MONOTONIC, e.g. a CRIU restore into a new time namespace. */
    jb(b, "  \"monotonic_lag_us\": %" PRId64 ",\n",
       s->mono_minus_rt_start - (monotonic_us() - realtime_us()));
    jb(b, "  \"gap_histogram\": [");
    for (int i = 0; i < NBUCKETS; i++) {
        if (i < NBUCKETS - 1)
            jb(b, "%s{\"lt_us\": %" PRIu64 ", \"count\": %" PRIu64 "}", i ? ", " : "",
               bucket_lt_us[i], s->hist[i]);
        else
            jb(b, ", {\"ge_us\": %" PRIu64 ", \"count\": %" PRIu64 "}", bucket_lt_us[NBUCKETS - 2],
               s->hist[i]);
    }
    jb(b, "],\n");
    jb(b, "  \"recent_missed\": [");
    uint64_t n = s->recent_count < NRECENT ? s->recent_count : NRECENT;
    for (uint64_t i = 0; i < n; i++) {
        const struct gap_event *e = &s->recent[(s->recent_count - n + i) % NRECENT];
        jb(b, "%s{\"at_us\": %" PRId64 ", \"gap_us\": %" PRIu64 "}", i ? ", " : "", e->at_us, e->gap_us);
    }
    jb(b, "],\n");
    jb(b, "  \"longest_missed\": [");
    for (uint64_t i = 0; i < s->longest_count; i++)
        jb(b, "%s{\"at_us\": %" PRId64 ", \"gap_us\": %" PRIu64 "}", i ? ", " : "", s->longest[i].at_us,
           s->longest[i].gap_us);
    jb(b, "],\n");
    const struct verification *v = &s->ver;
    jb(b, "  \"verification\": {\"verdict\": \"%s\", \"runs\": %" PRIu64 ", \"pages_checked\": %" PRIu64
          ", \"bad_pages\": %" PRIu64 ", ",
       v->verdict, v->runs, v->pages_checked, v->bad_pages);
    if (v->first_bad_page >= 0)
        jb(b, "\"first_bad_page\": %" PRId64 ", \"first_bad_offset\": %" PRId64 ", ", v->first_bad_page,
           v->first_bad_offset);
    else
        jb(b, "\"first_bad_page\": null, \"first_bad_offset\": null, ");
    jb(b, "\"pages_written_distinct\": %" PRIu64 ", ", v->pages_written_distinct);
    if (v->runs)
        jb(b, "\"at_us\": %" PRId64 ", \"duration_us\": %" PRIu64 "}\n", v->at_us, v->duration_us);
    else
        jb(b, "\"at_us\": null, \"duration_us\": null}\n");
    jb(b, "}\n");
}

static bool write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        p += w;
        n -= (size_t)w;
    }
    return true;
}

static void report_error(struct state *s, const char *what) {
    if (s->report_error_shown)
        return;
    s->report_error_shown = true;
    fprintf(stderr, "memtouch: cannot write report %s: %s: %s (continuing)\n", s->opt.report_path, what,
            strerror(errno));
}

/* Written to PATH.tmp and renamed over PATH, so a reader never sees a partial report. */
static void write_report(struct state *s, bool to_stdout) {
    struct jbuf *b = malloc(sizeof *b);
    if (b == NULL)
        return;
    build_report(s, b);
    if (b->overflow) {
        fprintf(stderr, "memtouch: report buffer overflow\n");
        free(b);
        return;
    }
    if (s->opt.report_path != NULL) {
        char tmp[4096];
        int n = snprintf(tmp, sizeof tmp, "%s.tmp", s->opt.report_path);
        if (n < 0 || (size_t)n >= sizeof tmp) {
            errno = ENAMETOOLONG;
            report_error(s, "path");
        } else {
            int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
            if (fd < 0) {
                report_error(s, "open");
            } else {
                bool ok = write_all(fd, b->data, b->len);
                if (!ok)
                    report_error(s, "write");
                if (close(fd) != 0 && ok) {
                    ok = false;
                    report_error(s, "close");
                }
                if (ok && rename(tmp, s->opt.report_path) != 0)
                    report_error(s, "rename");
                else if (ok)
                    s->reports_written++;
            }
        }
    }
    if (to_stdout)
        write_all(STDOUT_FILENO, b->data, b->len);
    free(b);
}

/* ---------------------------------------------------------------- control fifo */

static int open_control(const char *path) {
    struct stat st;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT || mkfifo(path, 0600) != 0) {
            fprintf(stderr, "memtouch: cannot create fifo %s: %s\n", path, strerror(errno));
            return -1;
        }
    } else if (!S_ISFIFO(st.st_mode)) {
        fprintf(stderr, "memtouch: --control %s exists and is not a fifo\n", path);
        return -1;
    }
    /* O_RDWR: never blocks on open, and we hold a writer so reads see EAGAIN, not EOF. */
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        fprintf(stderr, "memtouch: cannot open fifo %s: %s\n", path, strerror(errno));
    return fd;
}

static void poll_control(struct state *s) {
    if (s->control_fd < 0)
        return;
    for (;;) {
        ssize_t n = read(s->control_fd, s->control_buf + s->control_len, sizeof s->control_buf - 1 - s->control_len);
        if (n <= 0)
            break;
        s->control_len += (size_t)n;
        char *nl;
        while ((nl = memchr(s->control_buf, '\n', s->control_len)) != NULL) {
            *nl = '\0';
            char *line = s->control_buf;
            size_t len = strlen(line);
            while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
                line[--len] = '\0';
            if (strcmp(line, "verify") == 0 || strcmp(line, "report") == 0)
                g_verify = 1;
            else if (strcmp(line, "stop") == 0)
                g_stop = 1;
            else if (len > 0)
                fprintf(stderr, "memtouch: unknown control command '%s' (verify, stop)\n", line);
            size_t used = (size_t)(nl - s->control_buf) + 1;
            memmove(s->control_buf, nl + 1, s->control_len - used);
            s->control_len -= used;
        }
        if (s->control_len == sizeof s->control_buf - 1)
            s->control_len = 0; /* a line longer than the buffer: drop it */
    }
}

/* ---------------------------------------------------------------- main loop */

static void record_gap(struct state *s, int64_t gap, int64_t at) {
    uint64_t g = gap < 0 ? 0 : (uint64_t)gap;
    if (gap < 0)
        s->clock_went_back++;
    s->iterations++;
    int i = 0;
    while (i < NBUCKETS - 1 && g >= bucket_lt_us[i])
        i++;
    s->hist[i]++;
    if (g > s->longest_gap_us) {
        s->longest_gap_us = g;
        s->longest_gap_at_us = at;
    }
    if (g > s->opt.threshold_us) {
        s->missed_sleeps++;
        s->missed_time_us += g;
        struct gap_event e = {.at_us = at, .gap_us = g};
        s->recent[s->recent_count % NRECENT] = e;
        s->recent_count++;
        uint64_t n = s->longest_count;
        if (n < NRECENT || g > s->longest[NRECENT - 1].gap_us) {
            uint64_t i = n < NRECENT ? n : NRECENT - 1;
            while (i > 0 && s->longest[i - 1].gap_us < g) {
                s->longest[i] = s->longest[i - 1];
                i--;
            }
            s->longest[i] = e;
            if (n < NRECENT)
                s->longest_count++;
        }
    }
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: memtouch [--size MiB (1024)] [--stride 1|2|4|0 (1)] [--rate PAGES_PER_SEC (0 = one page per loop)]\n"
            "                [--whole-pages] [--sleep-us US (100)] [--threshold-us US (400)]\n"
            "                [--report PATH] [--report-interval-ms MS (1000, 0 = only on events)]\n"
            "                [--control FIFO] [--thp]\n"
            "Touches --size MiB, then loops: sleep, read CLOCK_REALTIME, count gaps over the threshold\n"
            "(missed sleeps), write the next page of the stride pattern. SIGUSR1 (or \"verify\" on the\n"
            "fifo) verifies all memory and writes the report; SIGTERM/SIGINT (or \"stop\") verifies,\n"
            "writes the final report (also to stdout) and exits 0 if memory is intact, 1 if not.\n");
}

static bool parse_u64(const char *name, const char *arg, uint64_t max, uint64_t *out) {
    char *end;
    errno = 0;
    if (arg == NULL || *arg == '\0' || *arg == '-')
        goto bad;
    unsigned long long v = strtoull(arg, &end, 10);
    if (errno != 0 || *end != '\0' || v > max)
        goto bad;
    *out = v;
    return true;
bad:
    fprintf(stderr, "memtouch: --%s wants an integer 0..%" PRIu64 ", got '%s'\n", name, max, arg ? arg : "");
    return false;
}

int main(int argc, char **argv) {
    static struct state st;
    struct state *s = &st;
    s->opt = (struct options){
        .size_mib = 1024, .stride = 1, .sleep_us = 100, .threshold_us = 400, .report_interval_ms = 1000,
    };
    s->control_fd = -1;
    s->phase = "touching";
    s->ver = (struct verification){.verdict = "not-run", .first_bad_page = -1, .first_bad_offset = -1};

    enum { O_SIZE = 1, O_STRIDE, O_RATE, O_WHOLE, O_SLEEP, O_THRESH, O_REPORT, O_INTERVAL, O_CONTROL, O_THP, O_HELP };
    static const struct option longopts[] = {
        {"size", required_argument, NULL, O_SIZE},
        {"stride", required_argument, NULL, O_STRIDE},
        {"rate", required_argument, NULL, O_RATE},
        {"whole-pages", no_argument, NULL, O_WHOLE},
        {"sleep-us", required_argument, NULL, O_SLEEP},
        {"threshold-us", required_argument, NULL, O_THRESH},
        {"report", required_argument, NULL, O_REPORT},
        {"report-interval-ms", required_argument, NULL, O_INTERVAL},
        {"control", required_argument, NULL, O_CONTROL},
        {"thp", no_argument, NULL, O_THP},
        {"help", no_argument, NULL, O_HELP},
        {NULL, 0, NULL, 0},
    };
    int c;
    bool ok = true;
    while (ok && (c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case O_SIZE: ok = parse_u64("size", optarg, 1ULL << 22, &s->opt.size_mib); break;
        case O_STRIDE: ok = parse_u64("stride", optarg, 1ULL << 30, &s->opt.stride); break;
        case O_RATE: ok = parse_u64("rate", optarg, 1ULL << 40, &s->opt.rate); break;
        case O_WHOLE: s->opt.whole_pages = true; break;
        case O_SLEEP: ok = parse_u64("sleep-us", optarg, 60000000, &s->opt.sleep_us); break;
        case O_THRESH: ok = parse_u64("threshold-us", optarg, 1ULL << 40, &s->opt.threshold_us); break;
        case O_REPORT: s->opt.report_path = optarg; break;
        case O_INTERVAL: ok = parse_u64("report-interval-ms", optarg, 1ULL << 32, &s->opt.report_interval_ms); break;
        case O_CONTROL: s->opt.control_path = optarg; break;
        case O_THP: s->opt.thp = true; break;
        case O_HELP:
        case 'h': usage(stdout); return 0;
        default: ok = false; break;
        }
    }
    if (ok && optind < argc) {
        fprintf(stderr, "memtouch: unexpected argument '%s'\n", argv[optind]);
        ok = false;
    }
    if (ok && s->opt.size_mib == 0) {
        fprintf(stderr, "memtouch: --size must be at least 1 MiB\n");
        ok = false;
    }
    if (!ok) {
        usage(stderr);
        return 2;
    }

    long ps = sysconf(_SC_PAGESIZE);
    s->page_size = ps > 0 ? (size_t)ps : 4096;
    s->words_per_page = s->page_size / sizeof(uint64_t);
    size_t bytes = (size_t)(s->opt.size_mib * MIB);
    s->npages = bytes / s->page_size;

    s->started_at_us = realtime_us();
    s->mono_minus_rt_start = monotonic_us() - s->started_at_us;

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_stop; /* no SA_RESTART: a signal cuts the sleep short */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sa.sa_handler = on_verify;
    sigaction(SIGUSR1, &sa, NULL);
    /* The signal mask survives exec: a parent that blocks these (a threaded test runner,
     * some inits) would otherwise make memtouch deaf to them. */
    sigset_t ours;
    sigemptyset(&ours);
    sigaddset(&ours, SIGTERM);
    sigaddset(&ours, SIGINT);
    sigaddset(&ours, SIGUSR1);
    sigprocmask(SIG_UNBLOCK, &ours, NULL);

    /* The per-page generations live in their own mapping, apart from the region. */
    s->gen_bytes = (size_t)s->npages * sizeof(uint32_t);
    s->gen = mmap(NULL, s->gen_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *region = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s->gen == MAP_FAILED || region == MAP_FAILED) {
        fprintf(stderr, "memtouch: cannot map %" PRIu64 " MiB: %s\n", s->opt.size_mib, strerror(errno));
        return 2;
    }
    s->region = region;
    /* Page-granular dirtying is the point: keep THP from turning one write into 2 MiB. */
    if (!s->opt.thp)
        (void)madvise(region, bytes, MADV_NOHUGEPAGE);
    /* Best effort (Linux >= 5.17): shows as [anon:memtouch] in /proc/PID/maps. */
    (void)prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)region, bytes, (unsigned long)"memtouch");
    (void)prctl(PR_SET_VMA, PR_SET_VMA_ANON_NAME, (unsigned long)s->gen, s->gen_bytes,
                (unsigned long)"memtouch-gen");

    if (s->opt.control_path != NULL) {
        s->control_fd = open_control(s->opt.control_path);
        if (s->control_fd < 0)
            return 2;
    }

    write_report(s, false); /* phase "touching", ready false: observers see the pid early */

    int64_t touch_start = realtime_us();
    for (uint64_t p = 0; p < s->npages; p++)
        fill_page(s, p, 0);
    s->touch_us = (uint64_t)(realtime_us() - touch_start);

    s->ready = true;
    s->phase = "running";
    s->ready_at_us = realtime_us();
    write_report(s, false);
    fprintf(stderr, "memtouch: pid %ld ready: %" PRIu64 " MiB at 0x%" PRIxPTR " touched in %" PRIu64 " ms\n",
            (long)getpid(), s->opt.size_mib, (uintptr_t)region, s->touch_us / 1000);

    struct timespec req = {.tv_sec = (time_t)(s->opt.sleep_us / 1000000),
                           .tv_nsec = (long)(s->opt.sleep_us % 1000000) * 1000};
    int64_t interval_us = (int64_t)s->opt.report_interval_ms * 1000;
    int64_t mono = monotonic_us();
    int64_t next_report = mono + interval_us;
    int64_t next_control = mono;
    int64_t rate_last = mono;
    /* A gap is the time between consecutive clock reads, so a freeze anywhere in the
     * loop (sleep, page write, report) counts. Only requested verification is excluded. */
    int64_t prev = realtime_us();

    while (!g_stop) {
        if (g_verify) {
            g_verify = 0;
            verify(s);
            write_report(s, false);
            prev = realtime_us();
            continue;
        }
        /* --sleep-us 0 means no sleep at all: nanosleep(0) still waits out the timer slack (~60 us). */
        if (s->opt.sleep_us > 0)
            nanosleep(&req, NULL); /* EINTR: a signal arrived; the gap is still measured */
        int64_t now = realtime_us();
        record_gap(s, now - prev, now);
        prev = now;

        mono = monotonic_us();
        if (s->opt.stride > 0) {
            bool write = true;
            if (s->opt.rate > 0) {
                double credit = s->rate_credit + (double)(mono - rate_last) * (double)s->opt.rate / 1e6;
                s->rate_credit = credit > 2.0 ? 2.0 : credit; /* no catch-up bursts after a freeze */
                rate_last = mono;
                write = s->rate_credit >= 1.0;
                if (write)
                    s->rate_credit -= 1.0;
            }
            if (write) {
                write_page(s, s->cursor);
                s->cursor += s->opt.stride;
                if (s->cursor >= s->npages)
                    s->cursor = 0;
            }
        }
        if (s->control_fd >= 0 && mono >= next_control) {
            poll_control(s);
            next_control = mono + 1000;
        }
        if (interval_us > 0 && mono >= next_report) {
            write_report(s, false);
            next_report = mono + interval_us;
        }
    }

    verify(s);
    s->phase = "exited";
    write_report(s, true);
    if (g_stop_signal)
        fprintf(stderr, "memtouch: signal %d: verification %s\n", (int)g_stop_signal, s->ver.verdict);
    return s->ver.bad_pages == 0 ? 0 : 1;
}
