// The console keeper: runs INSIDE a container as a child of its init, holding the master of
// the container's console pty (docs/console.md). It must be a static program exec'd from the
// container's own /dev tmpfs: CRIU refuses to dump a process whose executable or mappings
// live on a mount the container can't see, so it can't be a fork of godwit-spawn.
//
// Started by `godwit-spawn run` with fd 3 = the pty master and fd 4 = a listening abstract
// unix socket (@godwit-console, bound before the init ran, so nothing inside can squat it).
// It appends the console's output to the log file (argv[1]) and relays one client.
// SIGUSR1 (sent by the daemon before every CRIU dump) drops the client and refuses new
// ones for a while: CRIU can't dump a socket connected to a process outside the container.
//
// Wire protocol to a client: one status byte, 'K' (attached) or 'R' followed by a reason
// line and EOF (refused); after 'K' raw console bytes both ways.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef TIOCGPTPEER
#define TIOCGPTPEER _IO('T', 0x41)
#endif

#define MASTER 3
#define LISTENER 4
// Long enough to cover the gap between the daemon's signal and CRIU's freeze, short enough
// that a failed checkpoint doesn't lock users out for long.
#define REFUSE_SECONDS 2

static int log_fd = -1, client = -1, slave = -1;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

// The pty turns "\n" into "\r\n"; the log is read as a text file (`console --show-log`),
// as it was before consoles were ptys, so the carriage returns of line ends are dropped.
static void append_log(const char *buf, size_t n) {
    if (log_fd < 0) return;
    char out[16384];
    size_t m = 0;
    for (size_t i = 0; i < n && m < sizeof out; i++) {
        if (buf[i] == '\r' && i + 1 < n && buf[i + 1] == '\n') continue;
        out[m++] = buf[i];
    }
    write_all(log_fd, out, m);
}

static void drop_client(const char *why) {
    if (client < 0) return;
    if (why) write_all(client, why, strlen(why));
    shutdown(client, SHUT_RDWR);
    close(client);
    client = -1;
}

static void refuse(int fd, const char *why) {
    write_all(fd, "R", 1);
    write_all(fd, why, strlen(why));
    close(fd);
}

// Holding a slave ourselves keeps the master from reading EIO (and poll from spinning on
// POLLHUP) whenever nothing inside has the console open.
static void reopen_slave(void) {
    if (slave >= 0) close(slave);
    slave = ioctl(MASTER, TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC);
}

int main(int argc, char **argv) {
    if (argc > 1) log_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    reopen_slave();
    // Input nobody inside reads must not block us (and with us the console's output).
    fcntl(MASTER, F_SETFL, fcntl(MASTER, F_GETFL) | O_NONBLOCK);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    double refuse_until = 0;
    static char buf[16384];
    for (;;) {
        struct pollfd p[4] = {
            {.fd = sfd, .events = POLLIN},
            {.fd = MASTER, .events = POLLIN},
            {.fd = LISTENER, .events = POLLIN},
            {.fd = client, .events = POLLIN},
        };
        if (poll(p, 4, -1) < 0) {
            if (errno == EINTR) continue;
            return 1;
        }
        // Signals first: a client connecting in the same round as a checkpoint is refused.
        if (p[0].revents & POLLIN) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si) {
                drop_client("\r\n[godwit: detached: the container is being checkpointed]\r\n");
                refuse_until = now() + REFUSE_SECONDS;
            }
        }
        if (p[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = read(MASTER, buf, sizeof buf);
            if (r > 0) {
                append_log(buf, (size_t)r);
                // A client that can't keep up loses output rather than stall the
                // container's console writers (systemd blocks on /dev/console).
                if (client >= 0 && send(client, buf, (size_t)r, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
                    errno != EAGAIN && errno != EINTR)
                    drop_client(NULL);
            } else if (r < 0 && errno == EIO) {
                // Every slave was hung up (vhangup by a getty): take a fresh one, and don't spin.
                reopen_slave();
                usleep(100000);
            }
        }
        if (p[2].revents & POLLIN) {
            int fd = accept4(LISTENER, NULL, NULL, SOCK_CLOEXEC);
            if (fd >= 0) {
                if (now() < refuse_until)
                    refuse(fd, "the container is being checkpointed; try again in a moment\n");
                else if (client >= 0)
                    refuse(fd, "another client is attached to this console\n");
                else {
                    client = fd;
                    write_all(client, "K", 1);
                }
            }
        }
        if (client >= 0 && (p[3].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(client, buf, sizeof buf);
            if (r > 0) write_all(MASTER, buf, (size_t)r);
            else if (r == 0 || (errno != EINTR && errno != EAGAIN)) drop_client(NULL);
        }
    }
}
