import Checkpoint
import Foundation
import GodwitCore
import Synchronization

/// The source's end of the page channel: relays the destination's page-server session
/// (arriving through the daemons' authenticated channel) to the local `criu dump
/// --lazy-pages` page server, and back.
///
/// CRIU decides the source's fate from how this TCP connection ends (see
/// PageServerClient): after CLOSE was answered a clean FIN lets the dump complete; any
/// other end must be a reset (or an unknown command), which fails the dump and resumes
/// the source. A channel can't carry "reset", so the relay decides: it watches the
/// destination's requests (PageServerHeaders; clients send nothing else) for CLOSE, and
/// ends the CRIU connection with FIN only if CLOSE went through and was answered.
/// Every other end (the channel broke, the destination daemon died, we abort) is a reset.
///
/// Concurrency model: two threads, one per direction. The requests thread reads `channel`
/// and writes `criu`; the answers thread reads `criu` and writes `channel`. What they (and
/// callers of `abort`, `committed`, `bytesToDestination` on any thread) share is `session`,
/// behind a Mutex; `end()` decides FIN or reset while holding it (a few non-blocking
/// setsockopt/shutdown calls), so the decision is taken once and sees the latest
/// `closeAnswered`. The descriptors are immutable and closed only once both threads are
/// done (`group`), so no thread ever uses a reused fd.
public final class PageServerRelay: Sendable {
    public let channel: Int32
    let criu: Int32
    private struct Session {
        var closeForwarded = false
        var closeAnswered = false
        var ended = false
        var bytesToDestination: UInt64 = 0
    }
    private let session = Mutex(Session())
    private let group = DispatchGroup()
    /// What CRIU answered so far (page data and statuses), as relayed to the destination.
    public var bytesToDestination: UInt64 { session.withLock { $0.bytesToDestination } }

    /// Relays `channel` to CRIU over a connection made before the dump (`PageServerConnection`,
    /// our end, already resetting on close); the relay owns both descriptors from now on.
    public init(channel: Int32, connected criu: Int32) {
        self.criu = criu
        self.channel = channel
        start()
        group.notify(queue: .global()) { [criu, channel] in
            close(criu)
            close(channel)
        }
    }

    static func setLinger(_ fd: Int32, resetOnClose: Bool) {
        var l = linger(l_onoff: resetOnClose ? 1 : 0, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    private func start() {
        group.enter()
        let requests = Thread { [self] in
            defer { group.leave() }
            var bytes = [UInt8](repeating: 0, count: PageServerHeader.size)
            while true {
                guard Self.readFull(channel, &bytes) else { break }
                // Something that is not a header would make CRIU misread everything after
                // it: the session ends here (a reset) instead.
                guard let header = try? PageServerHeader(bytes: bytes) else { break }
                if header.isClose { session.withLock { $0.closeForwarded = true } }
                guard Self.writeFull(criu, header.encode()) else { break }
            }
            end()
        }
        group.enter()
        let answers = Thread { [self] in
            defer { group.leave() }
            var buffer = [UInt8](repeating: 0, count: 1 << 18)
            while true {
                let n = buffer.withUnsafeMutableBytes { recv(criu, $0.baseAddress, $0.count, 0) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                session.withLock { s in
                    s.bytesToDestination += UInt64(n)
                    // CRIU's only answer after CLOSE is its int32 status.
                    if s.closeForwarded { s.closeAnswered = true }
                }
                guard Self.writeFull(channel, Array(buffer[0..<n])) else { break }
            }
            // CRIU closed (after CLOSE, or it failed): pass the end on.
            shutdown(channel, Int32(SHUT_WR))
            end()
        }
        for thread in [requests, answers] { thread.stackSize = 1 << 20; thread.start() }
    }

    /// Ends the CRIU connection exactly once: FIN after an answered CLOSE, reset otherwise.
    /// (shutdown(SHUT_RD) sends nothing: it only wakes our reader; the close after both
    /// threads finish sends the reset, as linger is {on, 0}.)
    private func end() {
        session.withLock { s in
            guard !s.ended else { return }
            s.ended = true
            if s.closeAnswered {
                Self.setLinger(criu, resetOnClose: false)
                shutdown(criu, Int32(SHUT_WR))
            } else {
                Self.setLinger(criu, resetOnClose: true)
                shutdown(criu, Int32(SHUT_RD))
            }
            shutdown(channel, Int32(SHUT_RDWR))
        }
    }

    /// Whether the session is over, whichever way it ended.
    public var hasEnded: Bool { session.withLock { $0.ended } }

    /// Whether the session ended with an answered CLOSE (the dump completes).
    public var committed: Bool { session.withLock { $0.closeAnswered } }

    /// Fails the session now (the source resumes unless its tasks were killed).
    public func abort() { end() }

    /// Waits for both directions to finish.
    public func wait(timeout: TimeInterval) -> Bool {
        group.wait(timeout: .now() + timeout) == .success
    }

    static func readFull(_ fd: Int32, _ buffer: inout [UInt8]) -> Bool {
        var done = 0
        let count = buffer.count
        while done < count {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + done, count - done, 0) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }

    static func writeFull(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return false }
            done += n
        }
        return true
    }
}
