// godwit-spawn: the only place where Godwit forks. The daemon is multithreaded and must
// not fork; it starts this small single-threaded helper instead (like runc's nsexec).
#ifndef GODWIT_SPAWN_H
#define GODWIT_SPAWN_H

#include <sys/types.h>

#define MAX_CGROUPS 32
#define MAX_ENV 256
#define MAX_CAPDROP 64
#define MAX_DENY 512
// In the container's /dev tmpfs: what masked /proc files are bound to (system.c).
#define EMPTY_FILE "/dev/.empty"

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
    unsigned userns_base;    // run: host id that is 0 inside; 0 = no user namespace
    unsigned userns_count;
    int capdrop[MAX_CAPDROP];  // run, exec: capability numbers out of the bounding set
    int ncapdrop;
    int deny[MAX_DENY];      // run, exec: syscall numbers that fail with EPERM
    int ndeny;
    int no_new_privs;        // run, exec: PR_SET_NO_NEW_PRIVS before exec
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
void write_string(const char *path, const char *value);
void join_cgroups(const struct spawn_options *opts);
void close_inherited_fds(int keep);
void exec_command(const struct spawn_options *opts) __attribute__((noreturn));

// system.c
void setup_system(void);

// security.c
void parse_idmap(const char *text, struct spawn_options *o);
void write_idmap(pid_t pid, unsigned base, unsigned count);
void become_namespace_root(void);
void drop_capabilities(const struct spawn_options *o);
void install_seccomp(const struct spawn_options *o);
void apply_confinement(const struct spawn_options *o);

// idmap.c
int spawn_idmap(int argc, char **argv);

#endif
