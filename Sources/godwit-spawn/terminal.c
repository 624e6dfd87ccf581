// The client side of a terminal session (exec -t, console): raw mode on our terminal,
// window size forwarding, and the byte relay between our stdio and a pty master or a
// socket. Shared so that both behave the same way and restore the terminal the same way.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <termios.h>
#include <unistd.h>

#include "spawn.h"

static struct termios saved;
static int raw_active;

void terminal_restore(void) {
    if (raw_active) tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved);
    raw_active = 0;
}

// Raw mode only when stdin is a terminal: tests and scripts drive us through pipes.
void terminal_raw(void) {
    if (!isatty(STDIN_FILENO) || tcgetattr(STDIN_FILENO, &saved) < 0) return;
    struct termios raw = saved;
    cfmakeraw(&raw);
    if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0) {
        raw_active = 1;
        atexit(terminal_restore);
    }
}

// Copies our window size to `fd` (a pty master or slave); silently nothing without one.
void terminal_copy_size(int fd) {
    struct winsize ws;
    int from = isatty(STDIN_FILENO) ? STDIN_FILENO : STDOUT_FILENO;
    if (ioctl(from, TIOCGWINSZ, &ws) == 0 && ws.ws_row > 0) ioctl(fd, TIOCSWINSZ, &ws);
}

int write_all_fd(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

// A signalfd for the signals a session cares about: blocked, so they can't interrupt the
// relay half-way through a write, and read in the poll loop instead.
int terminal_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    int sigs[] = {SIGWINCH, SIGCHLD, SIGINT, SIGTERM, SIGHUP, SIGQUIT};
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++) sigaddset(&set, sigs[i]);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (fd < 0) fail("signalfd");
    return fd;
}
