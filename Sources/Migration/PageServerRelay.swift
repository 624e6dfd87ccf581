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
/// Surviving a broken channel (`keepAcrossBreaks`, from just before the commit in
/// post-copy and hybrid): a channel that breaks no longer ends CRIU's session. The relay
/// keeps CRIU's connection, reconnects through `reconnect` (the migration's credentials)
/// with backoff for the grace period, and carries on over the new channel. This works
/// because CRIU's lazy page server answers every GET from its page pipes with tee(2)
/// (criu/page-pipe.c page_pipe_read), which leaves the pages there: the same pages can be
/// served any number of times. The relay parses CRIU's answers (a 32-byte header, then
/// nr_pages × 4096 bytes; an int32 status for CLOSE), so it knows which request each
/// answers: answers to requests that came over an older channel are read and discarded,
/// never sent on the new one, and the destination re-sends every request it has no
/// complete answer for. A channel never sees half an answer followed by another one.
///
/// Concurrency model: one answers thread for the relay's life (reads `criu`, writes the
/// current channel), one requests thread per channel (reads it, writes `criu`), and a
/// reconnect thread while a channel is down. What they (and callers on any thread) share
/// is `session`, one Mutex, held only for non-blocking work (bookkeeping, setsockopt,
/// shutdown). Writes of requests to CRIU are serialised by `writing` (held across the
/// blocking write of one 32-byte header, so two channels' requests never interleave;
/// the answers thread never takes it). Every descriptor is closed only once all threads
/// are done (`group`): a retired channel is shut down at once and closed at the end, so
/// no thread ever uses a reused fd.
public final class PageServerRelay: Sendable {
    /// How to get a new channel after a break, and for how long to try.
    public struct Reconnect: Sendable {
        public var graceSeconds: Double
        /// Who is at the other end, for errors ("h2").
        public var peer: String
        /// Opens a new page channel (blocking), giving up after about the seconds given
        /// (what is left of the grace period).
        public var open: @Sendable (Double) throws -> Int32
        public init(graceSeconds: Double, peer: String, open: @escaping @Sendable (Double) throws -> Int32) {
            self.graceSeconds = graceSeconds; self.peer = peer; self.open = open
        }
    }

    /// A request forwarded to CRIU and not yet fully answered.
    private struct Owed {
        enum Kind { case get, close, other }
        let kind: Kind
        /// The channel it came over: its answer goes back only over the same one.
        let epoch: Int
    }

    private struct Session {
        var channel: Int32
        var epoch = 0
        /// Channels that broke or were replaced: shut down, closed at the end.
        var retired: [Int32] = []
        var owed: [Owed] = []
        var reconnect: Reconnect?
        /// Since when (uptime ns) the channel is down, and why; nil while it is up.
        var downSince: UInt64?
        var downReason = ""
        var reconnects = 0
        /// The answers thread is between the first and the last byte of an answer (no
        /// end-of-session marker may go out then).
        var midAnswer = false
        var closeForwarded = false
        var closeAnswered = false
        var ended = false
        /// Why the relay ended, if it was not CLOSE.
        var failure: String?
        var bytesToDestination: UInt64 = 0
    }
    private let session: Mutex<Session>
    private let writing = Mutex(())
    private let group = DispatchGroup()
    let criu: Int32
    /// The move's cap on memory pages (nil: none); the answers thread pays for each piece
    /// of an answer before it forwards it.
    let limiter: RateLimiter?
    /// What CRIU answered so far (page data and statuses), as relayed to the destination.
    public var bytesToDestination: UInt64 { session.withLock { $0.bytesToDestination } }

    /// Relays `channel` to CRIU over a connection made before the dump (`PageServerConnection`,
    /// our end, already resetting on close); the relay owns both descriptors from now on.
    public init(channel: Int32, connected criu: Int32, limiter: RateLimiter? = nil) {
        self.criu = criu
        self.limiter = limiter
        session = Mutex(Session(channel: channel))
        group.enter()
        spawn { [self] in answers() }
        startRequests(epoch: 0, channel: channel)
        group.leave()
        // Holds the relay until its last thread is done (they hold it too meanwhile).
        group.notify(queue: .global()) { [self] in
            close(criu)
            let (channel, retired) = session.withLock { ($0.channel, $0.retired) }
            if channel >= 0 { close(channel) }
            for fd in retired { close(fd) }
        }
    }

    static func setLinger(_ fd: Int32, resetOnClose: Bool) {
        var l = linger(l_onoff: resetOnClose ? 1 : 0, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    /// From now on a broken channel is reconnected instead of failing CRIU's session.
    /// False if the session already ended (then CRIU already failed the dump, and the
    /// source's tasks were resumed: the caller must not doom them).
    public func keepAcrossBreaks(_ reconnect: Reconnect) -> Bool {
        session.withLock { s in
            guard !s.ended else { return false }
            s.reconnect = reconnect
            return true
        }
    }

    // MARK: state for the engine

    /// Whether the session is over, whichever way it ended.
    public var hasEnded: Bool { session.withLock { $0.ended } }

    /// Whether the session ended with an answered CLOSE (the dump completes).
    public var committed: Bool { session.withLock { $0.closeAnswered } }

    /// Why the session ended other than by CLOSE (nil while it runs, or after CLOSE).
    public var failure: String? { session.withLock { $0.closeAnswered ? nil : $0.failure } }

    /// While the channel is down and being reconnected: for how long (s), and why it broke.
    public var linkDown: (seconds: Double, reason: String)? {
        session.withLock { s in
            guard !s.ended, let since = s.downSince else { return nil }
            return (Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9, s.downReason)
        }
    }

    /// How many times a broken channel was replaced.
    public var reconnects: Int { session.withLock { $0.reconnects } }

    /// Fails the session now (the source resumes unless its tasks were killed); tells the
    /// destination, where the channel still works, that no page will come any more.
    public func abort(_ why: String = "the source ended the page session") { end(failure: why) }

    /// Waits for every thread to finish.
    public func wait(timeout: TimeInterval) -> Bool {
        group.wait(timeout: .now() + timeout) == .success
    }

    // MARK: threads

    private func spawn(_ body: @escaping @Sendable () -> Void) {
        group.enter()
        let thread = Thread { [group] in body(); group.leave() }
        thread.stackSize = 1 << 20
        thread.start()
    }

    /// The destination's requests over one channel, to CRIU, until the channel ends or a
    /// newer one replaces it.
    private func startRequests(epoch: Int, channel: Int32) {
        spawn { [self] in
            var bytes = [UInt8](repeating: 0, count: PageServerHeader.size)
            while Self.readFull(channel, &bytes) {
                // Something that is not a header would make CRIU misread everything after
                // it: the session ends here (a reset) instead.
                guard let header = try? PageServerHeader(bytes: bytes) else {
                    end(failure: "the destination sent something that is not a page-server request")
                    return
                }
                let kind: Owed.Kind = header.isGet ? .get : header.isClose ? .close : .other
                var current = true, written = true
                writing.withLock { _ in
                    current = session.withLock { s in
                        guard s.epoch == epoch, !s.ended else { return false }
                        // Registered before CRIU can answer it.
                        s.owed.append(Owed(kind: kind, epoch: epoch))
                        if kind == .close { s.closeForwarded = true }
                        return true
                    }
                    if current { written = Self.writeFull(criu, header.encode()) }
                }
                guard current else { return }
                guard written else { end(failure: "CRIU's page server stopped taking requests"); return }
            }
            broke(epoch: epoch, why: "the destination's requests stopped (the channel ended)")
        }
    }

    /// CRIU's answers, each sent over the channel its request came from if that is still
    /// the current one, else read and dropped.
    private func answers() {
        var buffer = [UInt8](repeating: 0, count: 1 << 18)
        var header = [UInt8](repeating: 0, count: PageServerHeader.size)
        var peek: UInt8 = 0
        answering: while true {
            // Wait for CRIU to say something (or end) before deciding what it answers.
            let n = recv(criu, &peek, 1, Int32(MSG_PEEK))
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { break }
            guard let owed = session.withLock({ s -> Owed? in s.midAnswer = !s.owed.isEmpty; return s.owed.first }) else {
                end(failure: "CRIU's page server sent bytes no request asked for")
                return
            }
            switch owed.kind {
            case .close:
                var status = [UInt8](repeating: 0, count: 4)
                guard Self.readFull(criu, &status) else { break answering }
                session.withLock { s in
                    s.owed.removeFirst()
                    s.closeAnswered = true
                }
                forward(status, epoch: owed.epoch)
                session.withLock { $0.midAnswer = false }
            case .get, .other:
                guard Self.readFull(criu, &header) else { break answering }
                guard let answer = try? PageServerHeader(bytes: header), answer.isPresentPages else {
                    end(failure: "CRIU's page server answered a GET with something else")
                    return
                }
                forward(header, epoch: owed.epoch)
                var left = answer.byteCount  // at most maxPages pages: checked when decoded
                while left > 0 {
                    let n = buffer.withUnsafeMutableBytes { recv(criu, $0.baseAddress, min(left, $0.count), 0) }
                    if n < 0 && errno == EINTR { continue }
                    guard n > 0 else { break answering }
                    left -= n
                    forward(Array(buffer[0..<n]), epoch: owed.epoch)
                }
                session.withLock { s in
                    s.owed.removeFirst()
                    s.midAnswer = false
                }
            }
        }
        // CRIU closed: after CLOSE (FIN), or its dump failed (reset, nothing to keep).
        let closed = session.withLock { $0.closeAnswered }
        if closed {
            let channel = session.withLock { $0.channel }
            if channel >= 0 { shutdown(channel, Int32(SHUT_WR)) }
        }
        end(failure: closed ? nil : "CRIU's page server ended the session (its dump failed or was killed)")
    }

    /// Sends part of an answer to the destination if its request came over the current
    /// channel and that channel works; a failed write is a break.
    private func forward(_ bytes: [UInt8], epoch: Int) {
        let channel = session.withLock { s -> Int32 in
            guard s.epoch == epoch, s.downSince == nil, !s.ended else { return -1 }
            return s.channel
        }
        guard channel >= 0 else { return }
        limiter?.take(bytes.count)
        if Self.writeFull(channel, bytes) {
            session.withLock { $0.bytesToDestination &+= UInt64(bytes.count) }
        } else {
            broke(epoch: epoch, why: "sending pages to the destination failed (errno \(errno))")
        }
    }

    /// The channel of `epoch` broke. Without `keepAcrossBreaks` (or with CLOSE already on
    /// its way to CRIU) that ends the session as before; with it, the channel is retired
    /// and a reconnect starts.
    private func broke(epoch: Int, why: String) {
        enum Next { case nothing, reconnect }
        let next = session.withLock { s -> Next in
            guard s.epoch == epoch, !s.ended, s.downSince == nil else { return .nothing }
            // CRIU has CLOSE: the dump completes whatever the channel does now.
            if s.closeForwarded { return .nothing }
            guard s.reconnect != nil else {
                // Decided under the lock: keepAcrossBreaks must see it (the tasks resume).
                end(&s, failure: "the page channel broke: \(why)")
                return .nothing
            }
            s.downSince = DispatchTime.now().uptimeNanoseconds
            s.downReason = why
            shutdown(s.channel, Int32(SHUT_RDWR))
            s.retired.append(s.channel)
            s.channel = -1
            return .reconnect
        }
        switch next {
        case .nothing: return
        case .reconnect: spawn { [self] in reconnectLoop() }
        }
    }

    /// Opens new channels with backoff until one works or the grace period is over.
    private func reconnectLoop() {
        var wait = 0.25
        var lastError = ""
        while true {
            guard let (reconnect, since, why) = session.withLock({ s -> (Reconnect, UInt64, String)? in
                guard !s.ended, let r = s.reconnect, let since = s.downSince else { return nil }
                return (r, since, s.downReason)
            }) else { return }
            let down = Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9
            if down > reconnect.graceSeconds {
                end(failure: "the page channel to \(reconnect.peer) stayed down for more than \(Int(reconnect.graceSeconds)) s "
                    + "(the link broke: \(why); last reconnect attempt: \(lastError.isEmpty ? "none" : lastError))")
                return
            }
            do {
                let fd = try reconnect.open(reconnect.graceSeconds - down)
                let epoch = session.withLock { s -> Int? in
                    guard !s.ended else { return nil }
                    s.epoch += 1
                    s.channel = fd
                    s.downSince = nil
                    s.reconnects += 1
                    return s.epoch
                }
                guard let epoch else { close(fd); return }
                startRequests(epoch: epoch, channel: fd)
                return
            } catch let refused as ChannelRefused {
                end(failure: "\(reconnect.peer) refused the page channel after the link broke (\(why)): \(refused)")
                return
            } catch {
                lastError = (error as? GodwitError)?.message ?? "\(error)"
            }
            usleep(UInt32(min(wait, max(0.05, reconnect.graceSeconds - down)) * 1e6))
            // At most 1 s: faulting threads wait for the link, and a failed attempt is cheap.
            wait = min(wait * 2, 1)
        }
    }

    /// Ends the CRIU connection exactly once: FIN after an answered CLOSE, reset otherwise.
    /// (shutdown(SHUT_RD) sends nothing: it only wakes our reader; the close after every
    /// thread finished sends the reset, as linger is {on, 0}.) Where the channel still
    /// works and no answer is half sent, the destination is told that the session is over
    /// for good (a header with the abort command), so it stops waiting for a reconnect.
    private func end(failure: String?) {
        session.withLock { end(&$0, failure: failure) }
    }

    /// `end` with the lock held (everything in it is non-blocking).
    private func end(_ s: inout Session, failure: String?) {
        guard !s.ended else { return }
        s.ended = true
        if s.closeAnswered {
            Self.setLinger(criu, resetOnClose: false)
            shutdown(criu, Int32(SHUT_WR))
        } else {
            s.failure = failure ?? "the page session ended"
            Self.setLinger(criu, resetOnClose: true)
            shutdown(criu, Int32(SHUT_RD))
            if s.channel >= 0, s.downSince == nil, !s.midAnswer {
                _ = PageServerHeader.abortRequest.encode().withUnsafeBytes {
                    send(s.channel, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                }
            }
        }
        if s.channel >= 0 { shutdown(s.channel, Int32(SHUT_RDWR)) }
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
