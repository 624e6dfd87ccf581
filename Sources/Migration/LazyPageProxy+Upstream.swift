import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

// The proxy's upstream half: the answers from the source, and what happens when the
// connection to it breaks (see LazyPageProxy for the concurrency model).
extension LazyPageProxy {
    // MARK: surviving a broken connection

    /// From now on a broken connection to the source does not fail the session: unanswered
    /// requests wait (lazy-pages and the faulting threads are told nothing) until the
    /// source reconnects (`reattach`), for at most `seconds`. Past them the session fails.
    public func keepAcrossBreaks(graceSeconds seconds: Double) {
        state.withLock { $0.graceSeconds = seconds.isFinite ? max(0, seconds) : 0 }
    }

    /// While the connection to the source is down: for how long (s), and why it broke.
    public var linkDown: (seconds: Double, reason: String)? {
        state.withLock { s in
            guard let since = s.linkDownSince, !s.completed, s.failure == nil else { return nil }
            return (Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9, s.linkDownReason)
        }
    }

    public var graceSeconds: Double { state.withLock { $0.graceSeconds } }
    /// How many times the source reconnected.
    public var reconnects: Int { state.withLock { $0.reconnects } }

    /// A new connection from the source (it saw the old one break, or we did): every
    /// request without a complete answer is sent again on it, in order, and answers still
    /// coming on the old one are dropped (CRIU's page server serves a page as often as it
    /// is asked; the source's relay drops its answers to the old connection's requests).
    /// False (and `upstream` aborted) if the session is over or breaks aren't survived.
    @discardableResult
    public func reattach(_ upstream: any LazyPageUpstream) -> Bool {
        let (old, accepted) = state.withLock { s -> ((any LazyPageUpstream)?, Bool) in
            guard s.graceSeconds > 0, !s.completed, !s.stopping, s.failure == nil, s.upstreamError == nil else { return (nil, false) }
            let old = s.upstream
            s.upstream = upstream
            s.upstreamEpoch += 1
            s.linkDownSince = nil
            s.reconnects += 1
            for p in s.inFlight {
                guard let wire = p.wire else { continue }
                do { try send(wire, to: upstream) } catch {
                    linkBroke(&s, epoch: s.upstreamEpoch, why: "sending to the source again failed: \(error)")
                    break
                }
            }
            changed(&s)
            return (old, true)
        }
        old?.abort()
        if !accepted { upstream.abort() }
        return accepted
    }

    /// Sends `p.wire` to the source, or leaves it for the reconnect while the link is
    /// down; a failed send is a break when breaks are survived. Caller holds the lock.
    func sendUpstream(_ p: Pending, _ s: inout State) throws {
        guard s.linkDownSince == nil, let wire = p.wire else { return }
        s.trace.add("send \(p.nsPID) 0x\(String(p.vaddr, radix: 16)) \(p.fetchPages)\(p.isPrefetch ? " prefetch" : "") inFlight=\(s.inFlight.count)")
        do { try send(wire, to: s.upstream!) } catch {
            guard s.graceSeconds > 0 else { throw error }
            linkBroke(&s, epoch: s.upstreamEpoch, why: "\(error)")
        }
    }

    /// The connection of `epoch` broke: wait for the source to reconnect. A CLOSE with
    /// nothing else needed is answered at once (every page was delivered). The broken
    /// upstream is shut down (non-blocking), so that the source sees the break too.
    /// Caller holds the lock.
    func linkBroke(_ s: inout State, epoch: Int, why: String) {
        guard epoch == s.upstreamEpoch, s.linkDownSince == nil, !s.completed else { return }
        s.linkDownSince = DispatchTime.now().uptimeNanoseconds
        s.linkDownReason = why
        s.upstream?.abort()
        if !s.inFlight.contains(where: { !$0.isClose && !$0.isPrefetch }), let close = s.inFlight.first(where: { $0.isClose }) {
            s.inFlight.removeAll { $0 === close }
            answerClose(close, &s)
        }
        changed(&s)
    }

    // MARK: upstream: the source

    enum Step: Sendable { case wait, exit, read(Fetch), waitLink(Double), expired(String) }

    /// Not worth waiting for a reconnect: the source said the session is over, or spoke
    /// something that is not the protocol.
    struct FinalUpstreamError: Error, CustomStringConvertible { let description: String }

    func upstreamLoop() {
        var h = [UInt8](repeating: 0, count: PageServerHeader.size)
        while true {
            let step = state.withLock { s -> Step in
                if s.stopping || s.failure != nil { return .exit }
                if let since = s.linkDownSince {
                    let down = Double(DispatchTime.now().uptimeNanoseconds - since) / 1e9
                    if down >= s.graceSeconds {
                        return .expired("the page channel to the source stayed down for more than \(Int(s.graceSeconds)) s (the link broke: \(s.linkDownReason))")
                    }
                    s.upstreamIdle = true
                    return .waitLink(s.graceSeconds - down)
                }
                walkAhead(&s)
                guard let p = s.inFlight.first else { return s.completed ? .exit : s.sleep() }
                return .read(Fetch(isClose: p.isClose, nsPID: p.nsPID, vaddr: p.vaddr, pages: p.pages, fetchPages: p.fetchPages,
                                   request: p.request, upstream: s.upstream!, epoch: s.upstreamEpoch, id: ObjectIdentifier(p)))
            }
            let head: Fetch
            switch step {
            case .wait: work.wait(); continue
            case .waitLink(let seconds): _ = work.wait(timeout: .now() + min(seconds, 1) + 0.01); continue
            case .expired(let why):
                state.withLock { $0.upstreamError = $0.upstreamError ?? why }
                fail(why)
                return
            case .exit: return
            case .read(let fetch): head = fetch
            }
            /// Whether the answer just read still belongs to the current connection's head
            /// request (else it is dropped: the request went out again). Caller holds the lock.
            func current(_ s: State) -> Bool {
                head.epoch == s.upstreamEpoch && s.linkDownSince == nil && s.inFlight.first.map(ObjectIdentifier.init) == head.id
            }
            do {
                if head.isClose {
                    var status: Int32 = -1
                    try withUnsafeMutableBytes(of: &status) { try head.upstream.receive($0) }
                    head.upstream.finish()
                    let done = try state.withLock { [status] s -> Bool in
                        guard current(s) else { return false }
                        let p = s.inFlight.removeFirst()
                        if status != 0 { s.upstreamError = "the source answered CLOSE with \(status)" }
                        p.data = [0, 0, 0, 0]
                        p.ready = true
                        try flush(&s)
                        return true
                    }
                    if done { return } else { continue }
                }
                try h.withUnsafeMutableBytes { try head.upstream.receive($0) }
                guard let answer = try? PageServerHeader(bytes: h) else {
                    throw FinalUpstreamError(description: "the source sent something that is not a page-server answer")
                }
                if answer.command == PageServerHeader.Command.abort {
                    throw FinalUpstreamError(description: "the source ended the page session for good (its CRIU or the move ended there)")
                }
                guard answer.isPresentPages, answer.vaddr == head.vaddr, answer.nsPID == head.nsPID,
                      answer.pages > 0, answer.pages <= head.fetchPages else {
                    throw FinalUpstreamError(description: "the source's page server answered GET(\(head.nsPID), 0x\(String(head.vaddr, radix: 16)), \(head.fetchPages)) with \(answer) (do both hosts run the same CRIU version?)")
                }
                let nr = answer.pages
                var data = [UInt8](repeating: 0, count: answer.byteCount)
                try data.withUnsafeMutableBytes { try head.upstream.receive($0) }
                // Before the lock: the catch below takes it.
                let reply = try head.request.reply(pages: min(nr, head.pages))
                try state.withLock { [data] s in
                    // An answer from a connection that was replaced is never applied: its
                    // request went out again on the new one, and that answer counts.
                    guard current(s) else { return }
                    let p = s.inFlight.removeFirst()  // `head`: only this thread removes GETs
                    if p.isWalk {
                        s.walk.inFlightPages -= p.fetchPages
                        if nr < p.fetchPages {
                            s.walk.retry.append((p.nsPID, p.vaddr + UInt64(nr * pageSize), p.fetchPages - nr))
                            s.walk.finished = false
                        }
                    }
                    for i in 0..<p.fetchPages { s.fetching.remove(Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(i * pageSize))) }
                    s.stats.pagesFetched += nr
                    s.trace.add("answer \(p.nsPID) 0x\(String(p.vaddr, radix: 16)) \(nr)")
                    let answered = min(nr, p.pages)
                    if answered < p.pages && !p.isPrefetch { s.stats.shortReplies += 1 }
                    for i in 0..<nr {
                        let a = p.vaddr + UInt64(i * pageSize)
                        if !s.fetched.insert(Key(ns: p.nsPID, vaddr: a)).inserted { s.stats.pagesFetchedTwice += 1 }
                        if store.contains(nsPID: p.nsPID, vaddr: a) { s.stats.fetchedButAlreadyLocal += 1 }
                    }
                    do {
                        try data.withUnsafeBytes { try store.store(nsPID: p.nsPID, vaddr: p.vaddr, count: nr, data: $0) }
                    } catch {
                        // Only the "all local" bookkeeping suffers; the reply still goes out.
                    }
                    p.data = answered == nr ? data : Array(data[0..<(answered * pageSize)])
                    p.pages = answered
                    p.reply = reply
                    p.ready = true
                    try flush(&s)
                }
            } catch {
                // A broken connection (not a final word from the source) is waited out when
                // breaks are survived; one already replaced needs nothing at all.
                let survived = state.withLock { s -> Bool in
                    if head.epoch != s.upstreamEpoch { return true }
                    guard s.graceSeconds > 0, !s.stopping, !(error is FinalUpstreamError) else { return false }
                    linkBroke(&s, epoch: head.epoch, why: (error as? GodwitError)?.message ?? "\(error)")
                    return true
                }
                if survived { continue }
                let (stop, needed, deferredFailure) = state.withLock { s -> (Bool, Bool, String?) in
                    s.upstreamError = s.upstreamError ?? "\(error)"
                    // Prefetches nobody waits for are not a reason to fail; a GET deferred
                    // behind one now asks the source itself (and fails, if it needs it).
                    for p in s.inFlight where p.isPrefetch {
                        for i in 0..<p.fetchPages { s.fetching.remove(Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(i * pageSize))) }
                    }
                    s.inFlight.removeAll { $0.isPrefetch }
                    s.walk.inFlightPages = 0
                    let needed = s.inFlight.contains { !$0.isClose }
                    var deferredFailure: String?
                    if !needed, let close = s.inFlight.first(where: { $0.isClose }) {
                        // Every page was delivered; only the source's goodbye is missing.
                        s.inFlight.removeAll()
                        answerClose(close, &s)
                    } else if !needed {
                        do { try flush(&s) } catch { deferredFailure = "\(error)" }
                    }
                    return (s.stopping, needed, deferredFailure)
                }
                if stop { return }
                if needed {
                    fail("the connection to the source failed while pages were outstanding (\(error))")
                } else if let deferredFailure {
                    fail(deferredFailure)
                }
                return
            }
        }
    }

    func send(_ header: PageServerHeader, to upstream: any LazyPageUpstream) throws {
        try header.encode().withUnsafeBytes { try upstream.send($0) }
    }
}
