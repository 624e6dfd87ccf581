import Foundation

/// Starting a process that outlives its starter (a daemon), without Foundation's `Process`.
///
/// `Process` leaves a descriptor in the child (one end of a socket pair) and learns of the
/// child's exit when that descriptor closes. A daemon keeps it open for as long as it runs,
/// and hands it to anything it starts that doesn't close what it inherited: the starter's
/// `isRunning` / `waitUntilExit` then wait for the last of them, not for the daemon. Pipes
/// the starter is reading to EOF leak the same way. So: posix_spawn, stdio to a log, every
/// other descriptor close-on-exec, its own session, a default signal mask.
public enum DetachedProcess {
    /// Starts `argv` (argv[0] looked up in PATH when it has no slash) with stdin on /dev/null
    /// and stdout and stderr appended to `log` (created if missing), in a session of its own.
    /// `environment` nil: this process's. Returns the pid; the caller's child until reaped
    /// (`exitStatus(of:)`, `terminate(_:timeout:)`).
    @discardableResult
    public static func spawn(_ argv: [String], log: String, environment: [String: String]? = nil) throws -> pid_t {
        precondition(!argv.isEmpty)
        let executable = try Command.resolve(argv[0])
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else: whoever started us may be waiting for EOF on a descriptor we hold.
        // (glibc's addclosefrom isn't visible to Swift; close-on-exec does the same.)
        let open = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).compactMap { Int32($0) }
        for fd in open where fd > 2 {
            let flags = fcntl(fd, F_GETFD)
            if flags >= 0 { _ = fcntl(fd, F_SETFD, flags | FD_CLOEXEC) }
        }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // Own session (no terminal signals from the starter's), default signal mask.
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setflags(&attributes, Int16(0x80 /* POSIX_SPAWN_SETSID */ | POSIX_SPAWN_SETSIGMASK))
        var cArgs = argv.map { strdup($0) } + [nil]
        defer { for arg in cArgs { free(arg) } }
        var cEnv: [UnsafeMutablePointer<CChar>?] = environment.map { env in
            env.sorted { $0.key < $1.key }.map { strdup("\($0.key)=\($0.value)") } + [nil]
        } ?? []
        defer { for entry in cEnv { free(entry) } }
        var pid: pid_t = 0
        let status = cEnv.isEmpty
            ? posix_spawn(&pid, executable, &actions, &attributes, &cArgs, environ)
            : posix_spawn(&pid, executable, &actions, &attributes, &cArgs, &cEnv)
        guard status == 0 else { throw GodwitError.errno("posix_spawn \(executable)", status) }
        return pid
    }

    /// What became of a child started by `spawn`, without waiting: nil while it runs, else
    /// its exit status (128 + signal when a signal ended it). Reaps it. A pid that is not
    /// (or no longer) our child counts as ended once it is gone, with status -1.
    public static func exitStatus(of pid: pid_t) -> Int32? {
        var status: Int32 = 0
        let reaped = waitpid(pid, &status, WNOHANG)
        if reaped == pid {
            // WIFEXITED / WEXITSTATUS / WTERMSIG by hand: the macros aren't imported.
            let signal = status & 0x7f
            return signal == 0 ? (status >> 8) & 0xff : 128 + signal
        }
        if reaped == 0 { return nil }
        return kill(pid, 0) == 0 ? nil : -1
    }

    /// SIGTERM, then SIGKILL if it is still there after `timeout`; returns its exit status
    /// (see `exitStatus(of:)`), -1 when it outlived the SIGKILL's grace too. Polls: never
    /// blocks for longer than `timeout` plus that grace.
    @discardableResult
    public static func terminate(_ pid: pid_t, timeout: TimeInterval = 15) -> Int32 {
        if let status = exitStatus(of: pid) { return status }
        kill(pid, SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if let status = exitStatus(of: pid) { return status }
            usleep(20_000)
        }
        kill(pid, SIGKILL)
        // Bounded too: a process that is not our child may linger as someone else's zombie.
        let killDeadline = Date().addingTimeInterval(10)
        while Date() < killDeadline {
            if let status = exitStatus(of: pid) { return status }
            usleep(20_000)
        }
        return -1
    }
}
