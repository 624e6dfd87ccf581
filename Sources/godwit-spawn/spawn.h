// godwit-spawn: the only place where Godwit forks. The daemon is multithreaded and must
// not fork; it starts this small single-threaded helper instead (like runc's nsexec).
#ifndef GODWIT_SPAWN_H
#define GODWIT_SPAWN_H

#include <sys/types.h>

#define MAX_CGROUPS 32
#define MAX_ENV 256

struct spawn_options {
    const char *rootfs;      // run: directory that becomes the container's /
    const char *hostname;    // run: UTS name
    const char *console;     // run: file that receives the init's stdout and stderr
    const char *cwd;         // exec: working directory inside the container
    const char *cgroups[MAX_CGROUPS];  // absolute cgroup directories to join
    int ncgroups;
    char *env[MAX_ENV + 1];  // NULL-terminated
    int nenv;
    int tty;                 // exec: run CMD on a pty of the container's own
    pid_t target;            // exec: host pid of the container's init
    int system;              // run: a distribution's init (systemd): see system.c
    const char *keeper;      // run: static console keeper to copy in (console.c); NULL: no pty console
    char **argv;             // what to exec (after "--")
};

int spawn_run(const struct spawn_options *opts);
int spawn_exec(const struct spawn_options *opts);

int spawn_file(int argc, char **argv);

// console.c
struct console_setup { int master, slave, listener; };
void console_prepare(int keeper_src, struct console_setup *c);
void console_start_keeper(struct console_setup *c, const char *log);
int spawn_console(pid_t target);

// terminal.c
void terminal_raw(void);
void terminal_restore(void);
void terminal_copy_size(int fd);
int terminal_signals(void);
int write_all_fd(int fd, const char *p, size_t n);

// util.c
void die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
int report_fd(int fd);
void fail(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
void join_cgroups(const struct spawn_options *opts);
void close_inherited_fds(int keep);
void exec_command(const struct spawn_options *opts) __attribute__((noreturn));

// system.c
void setup_system(void);
void install_system_seccomp(void);

#endif
