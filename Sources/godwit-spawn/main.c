#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "spawn.h"

static const char usage[] =
    "usage:\n"
    "  godwit-spawn run --rootfs DIR --console PATH [--hostname NAME] [--cgroup DIR]...\n"
    "                   [--env K=V]... [--system] [--keeper FILE] [--userns BASE:COUNT]\n"
    "                   [--cap-drop N]... [--deny-syscall N]... [--no-new-privs] -- INIT [ARG]...\n"
    "      Starts INIT as pid 1 of new pid/mount/uts/ipc/net/cgroup namespaces rooted at DIR;\n"
    "      its stdout/stderr go to PATH inside the container (created, appended to).\n"
    "      --keeper: FILE (static godwit-console-keeper) is copied into the container and\n"
    "      holds a pty whose slave is /dev/console and INIT's stdio; it logs to PATH.\n"
    "      Protocol: prints \"pid N\" (N = INIT's host pid), waits for a line \"go\" on stdin\n"
    "      (the caller configures the network meanwhile), prints \"ok\" once INIT is exec'd.\n"
    "      --system: a distribution's init (systemd): tmpfs /run and /tmp, read-only\n"
    "      /proc/sys, masked kernel mounts, and the checkpointable seccomp profile (system.c).\n"
    "      --userns: a user namespace too, ids 0..COUNT-1 inside = BASE.. on the host; the\n"
    "      rootfs must already be owned accordingly (idmapped). --cap-drop takes capability\n"
    "      numbers out of the bounding set, --deny-syscall makes syscall numbers fail with EPERM\n"
    "      (security.c); exec takes the same three so what it runs is confined alike.\n"
    "  godwit-spawn exec --pid PID [--tty] [--system] [--cgroup DIR]... [--env K=V]... [--cwd DIR]\n"
    "                    [--cap-drop N]... [--deny-syscall N]... [--no-new-privs] -- CMD [ARG]...\n"
    "      Runs CMD inside the namespaces of the container whose init is PID; stdio passes\n"
    "      through and CMD's exit status is ours (128+N when killed by signal N). --tty runs\n"
    "      CMD on a pty of the container's own devpts and relays it (raw mode if stdin is a tty).\n"
    "  godwit-spawn idmap --map BASE:COUNT SRC DST\n"
    "      Attaches an idmapped recursive bind of SRC at DST: files owned by id N on disk show\n"
    "      as BASE+N through it (a throwaway user namespace carries the map; idmap.c).\n"
    "  godwit-spawn console --pid PID\n"
    "      Attaches to the console of the container whose init is PID (Ctrl-a q detaches).\n"
    "  godwit-spawn file push|pull --pid PID ... (see file.c)\n"
    "  godwit-spawn tunnel --socket PATH -- ARG...\n"
    "      rsync's remote shell (-e \"godwit-spawn tunnel --socket PATH --\"): connects to the\n"
    "      unix socket PATH, sends ARG... as one JSON array line, then copies stdin to the\n"
    "      socket and the socket to stdout; stdin's EOF becomes shutdown(SHUT_WR), the\n"
    "      socket's EOF closes stdout and ends the tunnel (as ssh does when the remote command\n"
    "      exits). Exits 0 when it ended cleanly, 1 otherwise.\n";

int spawn_tunnel(const char *socket_path, char **argv);

static const char *need_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) die("%s needs a value\n%s", argv[*i], usage);
    return argv[++*i];
}

static long small_number(const char *what, const char *text, long max) {
    char *end;
    errno = 0;
    long n = strtol(text, &end, 10);
    if (errno || end == text || *end || n < 0 || n > max) die("%s wants a number from 0 to %ld, not %s", what, max, text);
    return n;
}

static void parse(int argc, char **argv, struct spawn_options *o) {
    int i;
    for (i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--") == 0) { i++; break; }
        if (strcmp(a, "--rootfs") == 0) o->rootfs = need_value(argc, argv, &i);
        else if (strcmp(a, "--hostname") == 0) o->hostname = need_value(argc, argv, &i);
        else if (strcmp(a, "--console") == 0) o->console = need_value(argc, argv, &i);
        else if (strcmp(a, "--system") == 0) o->system = 1;
        else if (strcmp(a, "--keeper") == 0) o->keeper = need_value(argc, argv, &i);
        else if (strcmp(a, "--tty") == 0 || strcmp(a, "-t") == 0) o->tty = 1;
        else if (strcmp(a, "--cwd") == 0) o->cwd = need_value(argc, argv, &i);
        else if (strcmp(a, "--pid") == 0) o->target = (pid_t)atoi(need_value(argc, argv, &i));
        else if (strcmp(a, "--userns") == 0) parse_idmap(need_value(argc, argv, &i), o);
        else if (strcmp(a, "--no-new-privs") == 0) o->no_new_privs = 1;
        else if (strcmp(a, "--cap-drop") == 0) {
            if (o->ncapdrop == MAX_CAPDROP) die("too many --cap-drop");
            o->capdrop[o->ncapdrop++] = (int)small_number("--cap-drop", need_value(argc, argv, &i), 63);
        } else if (strcmp(a, "--deny-syscall") == 0) {
            if (o->ndeny == MAX_DENY) die("too many --deny-syscall");
            o->deny[o->ndeny++] = (int)small_number("--deny-syscall", need_value(argc, argv, &i), 1023);
        }
        else if (strcmp(a, "--cgroup") == 0) {
            if (o->ncgroups == MAX_CGROUPS) die("too many --cgroup");
            o->cgroups[o->ncgroups++] = need_value(argc, argv, &i);
        } else if (strcmp(a, "--env") == 0) {
            if (o->nenv == MAX_ENV) die("too many --env");
            o->env[o->nenv++] = (char *)need_value(argc, argv, &i);
        } else die("unknown option %s\n%s", a, usage);
    }
    if (i >= argc) die("missing -- COMMAND\n%s", usage);
    o->argv = argv + i;
    o->env[o->nenv] = NULL;
}

// Ignored signals and the blocked mask survive exec; the daemon's (Foundation ignores
// SIGPIPE, for one) must not leak into the container's init.
static void reset_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int sig = 1; sig < NSIG; sig++)
        if (sig != SIGKILL && sig != SIGSTOP) signal(sig, SIG_DFL);
}

int main(int argc, char **argv) {
    reset_signals();
    struct spawn_options opts;
    memset(&opts, 0, sizeof opts);
    if (argc < 2) die("%s", usage);
    // file has its own options too.
    if (strcmp(argv[1], "file") == 0) return spawn_file(argc, argv);
    // tunnel has its own options: parse() knows only run/exec's.
    if (strcmp(argv[1], "tunnel") == 0) {
        if (argc < 5 || strcmp(argv[2], "--socket") != 0 || strcmp(argv[4], "--") != 0 || argc < 6)
            die("tunnel needs --socket PATH -- ARG...\n%s", usage);
        return spawn_tunnel(argv[3], argv + 5);
    }
    if (strcmp(argv[1], "idmap") == 0) return spawn_idmap(argc, argv);
    if (strcmp(argv[1], "console") == 0) {
        if (argc != 4 || strcmp(argv[2], "--pid") != 0 || atoi(argv[3]) <= 0) die("console needs --pid PID\n%s", usage);
        return spawn_console((pid_t)atoi(argv[3]));
    }
    parse(argc, argv, &opts);
    if (strcmp(argv[1], "run") == 0) {
        if (!opts.rootfs || opts.rootfs[0] != '/') die("run needs --rootfs with an absolute path");
        if (!opts.console || opts.console[0] != '/')
            die("run needs --console PATH, absolute inside the container");
        return spawn_run(&opts);
    }
    if (strcmp(argv[1], "exec") == 0) {
        if (opts.target <= 0) die("exec needs --pid PID");
        return spawn_exec(&opts);
    }
    die("unknown mode %s\n%s", argv[1], usage);
}
