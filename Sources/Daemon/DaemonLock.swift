import Foundation
import GodwitCore

/// One daemon per state directory: an exclusive flock on STATE_DIR/godwitd.lock, held for
/// the daemon's lifetime (the kernel drops it when the process dies, even by SIGKILL), and
/// the pid in STATE_DIR/godwitd.pid for humans and scripts.
///
/// Concurrency model: nothing mutable. The descriptor and paths are set once in `init`;
/// `release` is called once, by the daemon's main task at shutdown.
public final class DaemonLock: Sendable {
    public let stateDir: URL
    private let fd: Int32

    public var pidFile: URL { stateDir.appendingPathComponent("godwitd.pid") }

    public init(stateDir: URL) throws {
        self.stateDir = stateDir
        let path = stateDir.appendingPathComponent("godwitd.lock").path
        // O_CLOEXEC: containers started by this daemon must not inherit the lock, or a new
        // daemon could never start while they run.
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GodwitError.errno("open(\(path))") }
        if flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let code = errno
            close(fd)
            guard code == EWOULDBLOCK else { throw GodwitError.errno("flock(\(path))", code) }
            let holder = HostEnvironment.read(stateDir.appendingPathComponent("godwitd.pid").path) ?? "unknown"
            throw GodwitError("another godwitd (pid \(holder)) is already running on \(stateDir.path)",
                              hint: "use that daemon, stop it first (`kill \(holder)`), or give this one another --state-dir")
        }
        self.fd = fd
        try Data("\(getpid())\n".utf8).write(to: pidFile, options: .atomic)
    }

    /// Clean shutdown: the pid file goes; the lock goes with the process.
    public func release() {
        try? FileManager.default.removeItem(at: pidFile)
        flock(fd, LOCK_UN)
        close(fd)
    }
}
