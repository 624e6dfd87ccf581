// godwit-spawn tunnel: rsync's "remote shell". rsync runs
//   godwit-spawn tunnel --socket S -- HOST rsync --server ARGS...
// and talks its protocol over our stdin/stdout. We connect to the unix socket S (owned by
// the daemon, which relays it over an authenticated peer stream), announce the command rsync
// wanted to run as one JSON line (the destination validates it; nothing runs a shell), then
// copy bytes both ways, propagating half-close: EOF on stdin becomes shutdown(SHUT_WR) on
// the socket (the socket's direction goes on), EOF on the socket closes stdout and ends the
// tunnel, as ssh ends when the remote command does.
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "spawn.h"

#define CHUNK (256 * 1024)

static char buf[CHUNK];

// JSON string escaping: quote, backslash and control characters; other bytes pass as is.
static int write_json_argv(int fd, char **argv) {
    static char line[64 * 1024];
    size_t len = 0;
#define PUT(c) do { if (len + 8 >= sizeof line) return -1; line[len++] = (c); } while (0)
    PUT('[');
    for (int i = 0; argv[i]; i++) {
        if (i) PUT(',');
        PUT('"');
        for (const unsigned char *s = (const unsigned char *)argv[i]; *s; s++) {
            if (*s == '"' || *s == '\\') { PUT('\\'); PUT((char)*s); }
            else if (*s < 0x20) {
                if (len + 8 >= sizeof line) return -1;
                len += (size_t)snprintf(line + len, 7, "\\u%04x", *s);
            } else PUT((char)*s);
        }
        PUT('"');
    }
    PUT(']');
    PUT('\n');
#undef PUT
    return write_all_fd(fd, line, len);
}

int spawn_tunnel(const char *socket_path, char **argv) {
    // A closed stdout (rsync gone) must be an error we report, not a silent SIGPIPE death.
    signal(SIGPIPE, SIG_IGN);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    if (strlen(socket_path) >= sizeof addr.sun_path) die("tunnel: socket path too long: %s", socket_path);
    strcpy(addr.sun_path, socket_path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("tunnel: socket: %s", strerror(errno));
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("tunnel: connect %s: %s", socket_path, strerror(errno));
    if (write_json_argv(sock, argv) < 0) die("tunnel: sending the command line: %s", strerror(errno));

    int in_open = 1, out_open = 1, failed = 0;
    while (in_open || out_open) {
        struct pollfd p[2] = {
            { .fd = in_open ? 0 : -1, .events = POLLIN },
            { .fd = out_open ? sock : -1, .events = POLLIN },
        };
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die("tunnel: poll: %s", strerror(errno));
        }
        if (in_open && (p[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                if (n < 0) failed = 1;
                shutdown(sock, SHUT_WR);
                in_open = 0;
            } else if (write_all_fd(sock, buf, (size_t)n) < 0) {
                // The other side is gone: nothing more can be delivered either way.
                fprintf(stderr, "godwit-spawn: tunnel: writing to %s: %s\n", socket_path, strerror(errno));
                return 1;
            }
        }
        if (out_open && (p[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = read(sock, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                if (n < 0) {
                    fprintf(stderr, "godwit-spawn: tunnel: reading %s: %s\n", socket_path, strerror(errno));
                    failed = 1;
                }
                close(1);
                out_open = 0;
                // The remote command finished (its output ended): like ssh, we are done,
                // whether or not our stdin ended. rsync keeps our stdin open until we exit,
                // so waiting for its EOF would deadlock.
                if (in_open) shutdown(sock, SHUT_WR);
                in_open = 0;
            } else if (write_all_fd(1, buf, (size_t)n) < 0) {
                fprintf(stderr, "godwit-spawn: tunnel: writing to stdout: %s\n", strerror(errno));
                return 1;
            }
        }
    }
    close(sock);
    return failed;
}
