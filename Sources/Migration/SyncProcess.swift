import Foundation
import GodwitCore
import Synchronization

// glibc has these, but their declarations are GNU extensions Swift's Glibc module does not
// import. Close-on-exec must be atomic: another thread may spawn a process at any moment.
@_silgen_name("posix_spawn_file_actions_addclosefrom_np")
private func spawnAddCloseFrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ from: Int32) -> Int32
@_silgen_name("pipe2")
func pipe2(_ fds: UnsafeMutablePointer<Int32>, _ flags: Int32) -> Int32
@_silgen_name("accept4")
func accept4(_ fd: Int32, _ address: UnsafeMutableRawPointer?, _ length: UnsafeMutablePointer<socklen_t>?, _ flags: Int32) -> Int32

/// A child process for the filesystem sync (rsync on either side), started with
/// posix_spawn: the daemon is multithreaded and must not fork, and Foundation's `Process`
/// leaks a descriptor into the child. Only stdin, stdout and stderr are inherited (every
/// other descriptor is closed in the child), so a peer stream fd held elsewhere in the
/// daemon can never keep a copy open and swallow an EOF.
///
/// Concurrency model: a reader thread owns the stderr pipe and appends to `errorText.data`
/// (a Mutex) until EOF, then signals `errorText.done`. The owner calls `wait`/`poll`/`kill`
/// (one thread waits; `kill` may come from another); `reaped` is behind a Mutex, which
/// `poll` and `kill` hold across their non-blocking waitpid/kill, and `wait` does NOT hold
/// across its blocking waitpid (it records the status afterwards).
final class SyncProcess: Sendable {
    let pid: pid_t
    let argv: [String]
    private let errorText: ErrorText
    /// Set once reaped (by `poll` or `wait`), so a second look doesn't waitpid a stranger.
    private let reaped = Mutex<Int32?>(nil)

    final class ErrorText: Sendable {
        /// The tail of stderr; the reader thread appends, `wait` reads after `done`.
        let data = Mutex(Data())
        let done = DispatchSemaphore(value: 0)
    }

    /// Starts `argv` with the given stdin and stdout (-1: /dev/null) and stderr captured.
    init(_ argv: [String], stdin: Int32, stdout: Int32) throws {
        let executable = try Command.resolve(argv[0])
        var pipeFds: [Int32] = [-1, -1]
        guard pipe2(&pipeFds, O_CLOEXEC) == 0 else { throw GodwitError.errno("pipe for \(argv[0])'s stderr") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        if stdin >= 0 { posix_spawn_file_actions_adddup2(&actions, stdin, 0) } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        if stdout >= 0 { posix_spawn_file_actions_adddup2(&actions, stdout, 1) } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        posix_spawn_file_actions_adddup2(&actions, pipeFds[1], 2)
        _ = spawnAddCloseFrom(&actions, 3)
        // rsync expects the default signal disposition and mask.
        let (status, pid) = spawnWithDefaultSignals(executable, argv, &actions)
        close(pipeFds[1])
        guard status == 0 else {
            close(pipeFds[0])
            throw GodwitError.errno("posix_spawn \(executable)", status)
        }
        self.pid = pid
        self.argv = argv
        // stderr is drained concurrently: a child blocked on a full pipe would never exit.
        let text = ErrorText()
        let readFd = pipeFds[0]
        let reader = Thread {
            var buffer = [UInt8](repeating: 0, count: 16384)
            while true {
                let n = read(readFd, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                text.data.withLock { data in
                    // Keep the tail only: the last lines explain a failure.
                    data.append(contentsOf: buffer[0..<n])
                    if data.count > 65536 { data = data.suffix(32768) }
                }
            }
            close(readFd)
            text.done.signal()
        }
        errorText = text
        reader.start()
    }

    /// Waits for the child; its exit status (128 + signal when killed) and stderr.
    func wait() -> (status: Int32, stderr: String) {
        if reaped.withLock({ $0 }) == nil {
            // Blocking: outside the lock, so `kill` can still reach the child meanwhile.
            var raw: Int32 = 0
            while waitpid(pid, &raw, 0) < 0 && errno == EINTR {}
            let status = Self.decode(raw)
            reaped.withLock { $0 = status }
        }
        errorText.done.wait()
        errorText.done.signal()
        let stderr = errorText.data.withLock { String(decoding: $0, as: UTF8.self) }
        return (reaped.withLock { $0 } ?? -1, stderr)
    }

    /// Non-blocking: the exit status if the child ended (then reaped; call `wait` for stderr).
    func poll() -> Int32? {
        reaped.withLock { reaped in
            if let reaped { return reaped }
            var raw: Int32 = 0
            guard waitpid(pid, &raw, WNOHANG) == pid else { return nil }
            reaped = Self.decode(raw)
            return reaped
        }
    }

    func kill() { reaped.withLock { if $0 == nil { _ = Glibc.kill(pid, SIGKILL) } } }

    static func decode(_ raw: Int32) -> Int32 {
        (raw & 0x7f) == 0 ? (raw >> 8) & 0xff : 128 + (raw & 0x7f)
    }
}

extension String {
    /// The last non-empty line: the one rsync uses to say why it failed.
    var lastLine: String {
        split(separator: "\n").last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }).map(String.init) ?? ""
    }
}

/// Copies bytes between two stream sockets in both directions until both have ended,
/// passing half-closes on (EOF on one side becomes shutdown(SHUT_WR) on the other). If one
/// direction fails, both sockets are shut down so the other direction cannot hang.
///
/// Concurrency model: `run` starts one pump thread per direction and blocks until both are
/// done. The pumps share only `outcome` (first failure and byte counts, in a Locked); they
/// shut the sockets down but never close them: the caller owns both and closes them after
/// `run` returns.
enum SocketRelay {
    /// Returns the bytes moved a→b and b→a; throws the first failure.
    static func run(_ a: Int32, _ b: Int32, label: String) throws -> (aToB: Int64, bToA: Int64) {
        // (first failure, bytes a→b, bytes b→a), written by both pump threads.
        let outcome = Locked<(GodwitError?, Int64, Int64)>((nil, 0, 0))
        let done = DispatchSemaphore(value: 0)
        func pump(_ from: Int32, _ to: Int32, _ direction: String, _ store: @escaping @Sendable (Int64) -> Void) {
            Thread.detachNewThread {
                var buffer = [UInt8](repeating: 0, count: 256 * 1024)
                var total: Int64 = 0
                var error: GodwitError?
                loop: while true {
                    let n = read(from, &buffer, buffer.count)
                    if n < 0 {
                        if errno == EINTR { continue }
                        error = GodwitError.errno("\(label): reading (\(direction))")
                        break
                    }
                    if n == 0 { break }
                    var offset = 0
                    while offset < n {
                        let w = buffer.withUnsafeBytes { send(to, $0.baseAddress! + offset, n - offset, Int32(MSG_NOSIGNAL)) }
                        if w < 0 {
                            if errno == EINTR { continue }
                            error = GodwitError.errno("\(label): writing (\(direction))")
                            break loop
                        }
                        offset += w
                    }
                    total += Int64(n)
                }
                if let error {
                    outcome.withLock { if $0.0 == nil { $0.0 = error } }
                    shutdown(a, Int32(SHUT_RDWR))
                    shutdown(b, Int32(SHUT_RDWR))
                } else {
                    shutdown(to, Int32(SHUT_WR))
                }
                store(total)
                done.signal()
            }
        }
        pump(a, b, "a→b") { value in outcome.withLock { $0.1 = value } }
        pump(b, a, "b→a") { value in outcome.withLock { $0.2 = value } }
        done.wait()
        done.wait()
        let (firstError, aToB, bToA) = outcome.value
        if let firstError { throw firstError }
        return (aToB, bToA)
    }
}
