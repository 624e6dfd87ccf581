#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include "spawn.h"

static void mount_or_fail(const char *src, const char *dst, const char *type,
                          unsigned long flags, const char *data) {
    if (mount(src, dst, type, flags, data) < 0) fail("mount %s on %s", type ? type : src, dst);
}

static void ensure_dir(const char *path, mode_t mode) {
    if (mkdir(path, mode) < 0 && errno != EEXIST) fail("mkdir %s", path);
}

// A tmpfs with mknod'd nodes rather than bind mounts of the host's /dev: a bind mount
// would point at the old root, which CRIU can't resolve once it is unmounted. In a user
// namespace nothing may mknod and no node on a tmpfs of its own opens, so there the nodes
// are binds of the host's (LXC does the same); Checkpoint's ExternalDevices names them to
// CRIU as external mounts.
static void setup_dev(int userns) {
    static const struct { const char *name; unsigned maj, min; } nodes[] = {
        {"/dev/null", 1, 3}, {"/dev/zero", 1, 5}, {"/dev/full", 1, 7},
        {"/dev/random", 1, 8}, {"/dev/urandom", 1, 9}, {"/dev/tty", 5, 0},
    };
    ensure_dir("/dev", 0755);
    mount_or_fail("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_STRICTATIME, "mode=755,size=65536k");
    mode_t old = umask(0);
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        if (!userns) {
            if (mknod(nodes[i].name, S_IFCHR | 0666, makedev(nodes[i].maj, nodes[i].min)) < 0)
                fail("mknod %s", nodes[i].name);
            continue;
        }
        char host[64];
        snprintf(host, sizeof host, "/.oldroot%s", nodes[i].name);
        int fd = open(nodes[i].name, O_WRONLY | O_CREAT | O_CLOEXEC, 0666);
        if (fd < 0) fail("create %s", nodes[i].name);
        close(fd);
        mount_or_fail(host, nodes[i].name, NULL, MS_BIND, NULL);
    }
    int empty = open(EMPTY_FILE, O_WRONLY | O_CREAT | O_CLOEXEC, 0444);
    if (empty < 0) fail("create %s", EMPTY_FILE);
    close(empty);
    ensure_dir("/dev/pts", 0755);
    // newinstance: the container's ptys are its own, which is what CRIU dumps and restores.
    mount_or_fail("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620");
    ensure_dir("/dev/shm", 01777);
    mount_or_fail("shm", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777,size=65536k");
    umask(old);
    static const char *links[][2] = {
        {"pts/ptmx", "/dev/ptmx"}, {"/proc/self/fd", "/dev/fd"},
        {"/proc/self/fd/0", "/dev/stdin"}, {"/proc/self/fd/1", "/dev/stdout"},
        {"/proc/self/fd/2", "/dev/stderr"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0) fail("symlink %s", links[i][1]);
}

// The recipe verified to dump and restore with CRIU (see host-facts.md): private
// propagation, rootfs bind-mounted on itself, pivot_root, old root lazily unmounted.
// In a user namespace the ids switch to its root after pivot_root: until then the host's
// paths (state directories may be 0700) are walked as host root, unmapped but their owner;
// from then on what is created is owned by the container's root, which file systems
// mounted inside require.
static void setup_root(const char *rootfs, int userns) {
    mount_or_fail(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    mount_or_fail(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL);
    if (chdir(rootfs) < 0) fail("chdir %s", rootfs);
    ensure_dir(".oldroot", 0700);
    if (syscall(SYS_pivot_root, ".", ".oldroot") < 0) fail("pivot_root %s", rootfs);
    if (chdir("/") < 0) fail("chdir /");
    if (userns) become_namespace_root();
    ensure_dir("/proc", 0555);
    mount_or_fail("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    ensure_dir("/sys", 0555);
    mount_or_fail("sysfs", "/sys", "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    setup_dev(userns);
    if (umount2("/.oldroot", MNT_DETACH) < 0) fail("umount /.oldroot");
    if (rmdir("/.oldroot") < 0) fail("rmdir /.oldroot");
}

// The console log lives inside the container's root and is opened after pivot_root: CRIU
// can only dump an fd whose mount is in the container's mount namespace (a file in the
// host's state dir fails with "Can't lookup mount"), and this way it migrates with the
// rootfs.
static int open_console(const char *path) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; (p = strchr(p, '/')) != NULL; p++) {
        *p = 0;
        ensure_dir(dir, 0755);
        *p = '/';
    }
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd < 0) fail("open console %s", path);
    return fd;
}

static void container_child(const struct spawn_options *o, int mapped_fd, int go_fd, int err_fd) {
    report_fd(err_fd);
    if (o->userns_base) {
        // Nothing that needs an id inside may happen before the parent wrote the map.
        char c;
        if (read(mapped_fd, &c, 1) != 1) _exit(125);
    }
    close(mapped_fd);
    // A session leader inside the dumped tree: CRIU then needs no --shell-job.
    if (setsid() < 0) fail("setsid");
    if (o->hostname && sethostname(o->hostname, strlen(o->hostname)) < 0) fail("sethostname");
    // Opened while the host's root is still ours: the copy is made once the container's
    // /dev exists.
    int keeper = -1;
    if (o->keeper && (keeper = open(o->keeper, O_RDONLY | O_CLOEXEC)) < 0) fail("open %s", o->keeper);
    setup_root(o->rootfs, o->userns_base != 0);
    if (o->system) setup_system();
    int console = open_console(o->console);
    struct console_setup pty;
    if (keeper >= 0) console_prepare(keeper, &pty);
    char go;
    // EOF here means the helper died or the caller aborted: never run half-configured.
    if (read(go_fd, &go, 1) != 1) _exit(125);
    close(go_fd);
    if (keeper >= 0) {
        // The keeper appends the console's output to the log; the init gets the pty.
        close(console);
        console_start_keeper(&pty, o->console);
    } else {
        int devnull = open("/dev/null", O_RDWR);
        if (devnull < 0) fail("open /dev/null");
        if (dup2(devnull, 0) < 0 || dup2(console, 1) < 0 || dup2(console, 2) < 0) fail("dup2");
    }
    close_inherited_fds(err_fd);
    // Last: nothing of ours may be refused by it.
    apply_confinement(o);
    exec_command(o);
}

int spawn_run(const struct spawn_options *o) {
    join_cgroups(o);
    int go[2], err[2], mapped[2];
    if (pipe2(go, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(mapped, O_CLOEXEC) < 0) fail("pipe");
    fflush(stdout);
    unsigned long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC |
                          CLONE_NEWNET | CLONE_NEWCGROUP | SIGCHLD;
    // With CLONE_NEWUSER the kernel makes the user namespace first, so it owns all the
    // others: root inside administers them and nothing of the host's.
    if (o->userns_base) flags |= CLONE_NEWUSER;
    // Raw clone with no new stack behaves like fork: the child is pid 1 of the new pid
    // namespace and is born in all the others, cgroup namespace rooted at our cgroup.
    pid_t pid = (pid_t)syscall(SYS_clone, flags, NULL, NULL, NULL, 0);
    if (pid < 0) fail("clone");
    if (pid == 0) {
        close(go[1]);
        close(err[0]);
        close(mapped[1]);
        container_child(o, mapped[0], go[0], err[1]);
    }
    close(go[0]);
    close(err[1]);
    close(mapped[0]);
    if (o->userns_base) {
        write_idmap(pid, o->userns_base, o->userns_count);
        if (write(mapped[1], "m", 1) != 1) fail("signal container");
    }
    close(mapped[1]);
    printf("pid %d\n", pid);
    fflush(stdout);

    char line[64];
    if (!fgets(line, sizeof line, stdin) || strncmp(line, "go", 2) != 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        die("aborted before the container's init started (no \"go\" on stdin)");
    }
    if (write(go[1], "g", 1) != 1) fail("signal container");
    close(go[1]);

    char msg[1024];
    ssize_t n, total = 0;
    while ((n = read(err[0], msg + total, sizeof msg - 1 - total)) > 0) total += n;
    if (total > 0) {
        msg[total] = 0;
        // The init may be running already (a failed keeper exec is reported from its child).
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        die("container setup failed: %s", msg);
    }
    // Exiting hands the init to the host's (or the daemon's sub-)reaper: nothing of ours
    // stays between the container and CRIU.
    printf("ok\n");
    fflush(stdout);
    return 0;
}
