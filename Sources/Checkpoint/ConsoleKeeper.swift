import Foundation
import GodwitCore

/// The console keeper of a container (keeper/godwit-console-keeper.c, docs/console.md): a
/// child of the init that holds the console pty and relays one client over a unix socket.
/// CRIU refuses to dump a socket connected to a process outside the container, so every
/// dump first asks the keeper to drop its client.
public enum ConsoleKeeper {
    /// The keeper's comm: godwit-spawn execs it as /dev/.console-keeper.
    public static let comm = ".console-keeper"

    /// The keeper's host pid: a child of the init's main thread (forked before the init's
    /// exec, and CRIU restores it there). nil for a container without one (or a non-container).
    public static func find(initPID: Int32) -> Int32? {
        guard initPID > 0, let children = HostEnvironment.read("/proc/\(initPID)/task/\(initPID)/children") else { return nil }
        for word in children.split(separator: " ") {
            guard let pid = Int32(word) else { continue }
            if HostEnvironment.read("/proc/\(pid)/comm") == comm { return pid }
        }
        return nil
    }

    /// When a client is attached, signals the keeper (SIGUSR1: drop the client, refuse new
    /// ones for ~2 s) and waits, at most `timeout`, until it holds no socket but its listener.
    /// Called before CRIU starts, i.e. before the freeze: without a client it costs a couple
    /// of /proc reads and sends nothing.
    /// Returns false when a client was still connected at the deadline (the dump will then
    /// fail and say why; the container keeps running).
    @discardableResult
    public static func detachClients(initPID: Int32, timeout: TimeInterval = 1) -> Bool {
        // Only with a client attached: a signal still pending at the freeze is dumped, and the
        // keeper then handles it on the destination after the restore. A client that attaches
        // between this check and CRIU's freeze makes the dump fail, and the container resumes.
        guard let keeper = find(initPID: initPID), let sockets = socketCount(keeper), sockets > 1 else { return true }
        kill(keeper, SIGUSR1)
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            guard let sockets = socketCount(keeper), sockets > 1 else { return true }
            if Date() >= deadline { return false }
            usleep(10_000)
        }
    }

    /// How many sockets `pid` holds; nil when it is gone.
    static func socketCount(_ pid: Int32) -> Int? {
        let dir = "/proc/\(pid)/fd"
        guard let fds = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return nil }
        var count = 0
        var buffer = [CChar](repeating: 0, count: 64)
        for fd in fds {
            let n = readlink(dir + "/" + fd, &buffer, buffer.count - 1)
            if n > 0 {
                buffer[n] = 0
                if String(cString: buffer).hasPrefix("socket:") { count += 1 }
            }
        }
        return count
    }
}
