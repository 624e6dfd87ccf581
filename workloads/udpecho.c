/*
 * udpecho: the responder of `godwit bench migrate`'s network-downtime probe. It answers
 * every UDP datagram on --port (default 7777) with the same bytes, so a client sending one
 * every millisecond sees how long the container was unreachable across a migration.
 * Static and libc-only, like memtouch, so it runs in the busybox image. CRIU checkpoints
 * its bound UDP socket; after a restore it carries on answering.
 *
 * usage: udpecho [--port N]   (runs until killed)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

int main(int argc, char **argv) {
    long port = 7777;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--port") == 0 && i + 1 < argc) {
            char *end = NULL;
            port = strtol(argv[++i], &end, 10);
            if (!end || *end || port < 1 || port > 65535) {
                fprintf(stderr, "udpecho: invalid port %s\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: udpecho [--port N]\n");
            return 2;
        }
    }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("udpecho: socket"); return 2; }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)port);
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) { perror("udpecho: bind"); return 2; }
    char buf[2048];
    for (;;) {
        struct sockaddr_in from;
        socklen_t len = sizeof from;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&from, &len);
        if (n < 0) {
            if (errno == EINTR) continue;
            perror("udpecho: recvfrom");
            return 1;
        }
        (void)sendto(fd, buf, (size_t)n, 0, (struct sockaddr *)&from, len);
    }
}
