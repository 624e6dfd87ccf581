import Foundation
import GodwitCore
import Synchronization

// glibc has these, but their declarations are GNU extensions Swift's Glibc module does not
// import. Close-on-exec must be atomic: another thread may spawn a process at any moment.
@_silgen_name("pipe2")
private func pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32
@_silgen_name("posix_spawn_file_actions_addclosefrom_np")
private func spawnAddCloseFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ from: Int32) -> Int32

/// A CRIU that keeps running in the background (a lazy dump's page server, `criu
/// lazy-pages`) and tells when it is ready through `--status-fd`: CRIU writes one byte to
/// that descriptor and closes it once its server listens (status_ready() in criu/util.c),
/// and the descriptor closes without a byte if CRIU exits first.
///
/// Started with posix_spawn, not Foundation's `Process`: that one leaves a descriptor of
/// its own in the child and blocks SIGTERM in it, and its API hands a child stdio only.
/// Here the child gets stdio on /dev/null, the status pipe's write end as descriptor
/// `statusFD`, and nothing else.
final class CRIUProcess: Sendable {
    /// The descriptor number `--status-fd` names in CRIU.
    static let statusFD: Int32 = 3
    /// The descriptor number `--ps-socket` names in CRIU, when a connection is handed over.
    public static let pageServerFD: Int32 = 4

    enum Readiness: Equatable, Sendable {
        /// CRIU wrote its status byte.
        case ready
        /// The status pipe closed without a byte: CRIU is gone (or going).
        case exited
        case timedOut
    }

    let pid: pid_t
    let argv: [String]
    /// The exit status once reaped (128 + signal when a signal ended it).
    private let reaped = Mutex<Int32?>(nil)
    private let status: Mutex<StatusPipe>

    private struct StatusPipe {
        /// The read end; -1 once the outcome is known.
        var fd: Int32
        /// `.ready` or `.exited`, which never change.
        var outcome: Readiness?
    }

    init(_ argv: [String], pageServerSocket: Int32? = nil) throws {
        precondition(!argv.isEmpty)
        let executable = try Command.resolve(argv[0])
        var fds: [Int32] = [-1, -1]
        guard pipe2(&fds, O_CLOEXEC) == 0 else { throw GodwitError.errno("pipe for CRIU's --status-fd") }
        var writeEnd = fds[1]
        // dup2 onto the same number would leave close-on-exec set.
        if writeEnd == Self.statusFD {
            writeEnd = fcntl(fds[1], F_DUPFD_CLOEXEC, Self.statusFD + 1)
            close(fds[1])
            guard writeEnd >= 0 else {
                close(fds[0])
                throw GodwitError.errno("dup of CRIU's status pipe")
            }
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        // CRIU talks through its log file and sockets.
        var failed = posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        if failed == 0 { failed = posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0) }
        if failed == 0 { failed = posix_spawn_file_actions_adddup2(&actions, 1, 2) }
        if failed == 0 { failed = posix_spawn_file_actions_adddup2(&actions, writeEnd, Self.statusFD) }
        // dup2 clears close-on-exec on the copy; the source number must not be the target's.
        if failed == 0, let socket = pageServerSocket {
            precondition(socket != Self.pageServerFD && socket != Self.statusFD && writeEnd != Self.pageServerFD)
            failed = posix_spawn_file_actions_adddup2(&actions, socket, Self.pageServerFD)
        }
        // An inherited descriptor would be an "external" file to CRIU, and one that held
        // a stream's end open would swallow that stream's EOF.
        let firstClosed = pageServerSocket == nil ? Self.statusFD + 1 : Self.pageServerFD + 1
        if failed == 0 { failed = spawnAddCloseFrom(&actions, firstClosed) }
        guard failed == 0 else {
            close(fds[0])
            close(writeEnd)
            throw GodwitError.errno("posix_spawn file actions for CRIU", failed)
        }
        let (rc, pid) = spawnWithDefaultSignals(executable, argv, &actions)
        // Only CRIU may hold the write end: its exit must close the pipe.
        close(writeEnd)
        guard rc == 0 else {
            close(fds[0])
            throw GodwitError.errno("posix_spawn \(executable)", rc)
        }
        self.pid = pid
        self.argv = argv
        status = Mutex(StatusPipe(fd: fds[0], outcome: nil))
    }

    deinit {
        status.withLock { pipe in
            if pipe.fd >= 0 { close(pipe.fd) }
        }
        // Nobody will wait for it any more: reap it whenever it ends, so it leaves no zombie.
        if exitStatus == nil {
            let pid = pid
            let reaper = Thread {
                var raw: Int32 = 0
                while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            }
            reaper.stackSize = 64 << 10
            reaper.start()
        }
    }

    // MARK: exit

    /// Nil while CRIU runs; else its exit status (128 + signal). Reaps it.
    var exitStatus: Int32? {
        reaped.withLock { reaped in
            if let reaped { return reaped }
            var raw: Int32 = 0
            let r = waitpid(pid, &raw, WNOHANG)
            if r == pid {
                reaped = Self.decode(raw)
            } else if r < 0 && errno == ECHILD {
                // Reaped elsewhere (nothing else should): it has ended, status unknown.
                reaped = -1
            }
            return reaped
        }
    }

    var isRunning: Bool { exitStatus == nil }

    /// Waits for CRIU to exit; its status, or nil on timeout.
    func waitForExit(timeout: TimeInterval) -> Int32? {
        var result: Int32?
        _ = poll(timeout: timeout) {
            result = exitStatus
            return result != nil
        }
        return result
    }

    /// SIGKILL, then reap.
    func kill() {
        reaped.withLock { reaped in
            guard reaped == nil else { return }
            _ = Glibc.kill(pid, SIGKILL)
            var raw: Int32 = 0
            var r: pid_t
            repeat { r = waitpid(pid, &raw, 0) } while r < 0 && errno == EINTR
            reaped = r == pid ? Self.decode(raw) : -1
        }
    }

    static func decode(_ raw: Int32) -> Int32 {
        (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
    }

    // MARK: readiness

    /// Waits for CRIU's status byte. `.ready` and `.exited` are final: later calls return
    /// them at once. Callers waiting at the same time are served one after the other.
    func waitUntilReady(timeout: TimeInterval) -> Readiness {
        let deadline = Date().addingTimeInterval(timeout)
        return status.withLock { pipe in
            if let outcome = pipe.outcome { return outcome }
            while true {
                switch readStatusByte(pipe.fd, until: deadline) {
                case .ready:
                    close(pipe.fd)
                    pipe = StatusPipe(fd: -1, outcome: .ready)
                    return .ready
                case .exited:
                    close(pipe.fd)
                    pipe = StatusPipe(fd: -1, outcome: .exited)
                    return .exited
                case .timedOut:
                    return .timedOut
                case nil:
                    continue
                }
            }
        }
    }

    /// One wait of at most 100 ms; nil: no answer yet, ask again.
    private func readStatusByte(_ fd: Int32, until deadline: Date) -> Readiness? {
        let remaining = deadline.timeIntervalSinceNow
        if remaining <= 0 { return .timedOut }
        // Short slices: a helper CRIU started (nft, tar) may still hold the write end
        // after CRIU itself died, so EOF alone could come late.
        var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let r = Glibc.poll(&pfd, 1, Int32(min(remaining, 0.1) * 1000) + 1)
        if r < 0 && errno != EINTR { return .exited }
        if r > 0 {
            var byte: UInt8 = 0
            let n = read(fd, &byte, 1)
            if n == 1 { return .ready }
            if n == 0 { return .exited }
            if errno != EINTR && errno != EAGAIN { return .exited }
            return nil
        }
        guard !isRunning else { return nil }
        // It exited: a byte it wrote just before is still in the pipe.
        var last = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if Glibc.poll(&last, 1, 0) > 0 {
            var byte: UInt8 = 0
            if read(fd, &byte, 1) == 1 { return .ready }
        }
        return .exited
    }
}
