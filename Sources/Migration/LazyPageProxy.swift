import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

/// The destination-side page proxy: `criu lazy-pages` connects to it as if it were the
/// source's page server. Every GET is answered from the page store when its first page
/// is held (a short reply covering the held prefix; lazy-pages asks again for the rest),
/// otherwise the longest run of pages the store lacks is fetched from the upstream, so a
/// page the destination has is never fetched. Replies leave in request order: local
/// answers queue behind outstanding forwarded ones. Fetched pages go into the store too,
/// so nothing is fetched twice. CLOSE from lazy-pages (every page delivered) is passed
/// upstream and answered 0.
///
/// A broken connection (`keepAcrossBreaks`, see LazyPageProxy+Upstream.swift): the
/// requests without a complete answer wait, and go out again when the source reconnects.
///
/// Upstream failure: if nothing more is needed from the source (no fetch outstanding, and
/// every later GET can be answered locally) the proxy serves on; a GET that needs the
/// source then fails the session (`onFailure`) WITHOUT closing the lazy-pages connection,
/// so that the caller can kill the restored tasks before lazy-pages dies and the kernel
/// would map zero pages in place of the missing ones.
///
/// Concurrency model: the downstream thread reads lazy-pages' requests and handles them,
/// the upstream thread reads the source's answers; `apply` (the push) and the control calls
/// come from other threads. All mutable state is in `state`, one Mutex, and every use of
/// `store` is under it. It is held across blocking writes on purpose: GETs to the source
/// (their wire order is `inFlight`'s, the order answers come back in) and replies to
/// lazy-pages (they leave in request order), and re-sends on a new connection
/// (`reattach`); never across a read, `finish`, CLOSE's send or `onFailure`. An upstream's
/// `abort` is non-blocking (a shutdown) and may come under it (`linkBroke`). The upstream
/// thread sleeps on `work`, `wait` on `ended` (see `changed`). `@unchecked` only for
/// `store`, a PageStore (not Sendable) the caller shares: we touch it only inside the
/// lock, the caller before `start`/after `stop`. What the upstream half
/// (LazyPageProxy+Upstream.swift) shares with this file is internal, not private, for
/// that reason only: nothing outside the proxy uses it.
public final class LazyPageProxy: @unchecked Sendable {
    /// `criu lazy-pages`' end of its page-server connection, made before it starts and
    /// handed to it (`--ps-socket`; see PageServerConnection): the proxy never listens, so
    /// no other local process can ask it for the container's memory or send CLOSE. The
    /// taker owns it (`takeLazyPagesEnd`).
    private let lazyPagesEnd: Mutex<Int32>
    public var stats: LazyProxyStats { statistics }
    /// Called once, on a proxy thread, when the session can't go on. Set before `start()`.
    public var onFailure: (@Sendable (String) -> Void)? { get { state.withLock { $0.onFailure } } set { state.withLock { $0.onFailure = newValue } } }
    /// Read-ahead for background GETs (more than one page), in pages: the proxy asks the
    /// source for up to this many pages the store lacks from the requested address (the
    /// source clamps the answer at the end of its page run), answers lazy-pages what it
    /// asked, and keeps the rest for its next GETs. Why: lazy-pages keeps one background
    /// GET in flight and drops its size back to 64 KiB after every page fault, so with a
    /// faulting application its background rate is 64 KiB per round trip; through the
    /// daemons' TLS channel and the source's relay a round trip costs several times
    /// CRIU's direct TCP one. 0 = fetch exactly what was asked. Faults (1-page GETs) are
    /// enlarged only by `faultReadAheadPages`. Set before `start()`.
    public var readAheadPages: Int { get { state.withLock { $0.readAheadPages } } set { state.withLock { $0.readAheadPages = Self.clamped(newValue) } } }
    /// What a destination uses when the source is reached through the daemons' channel:
    /// 1 MiB, ~8 ms on a 1 Gbit/s link (what a page fault may wait behind it).
    public static let remoteReadAheadPages = 256
    /// Read-ahead for faults (1-page GETs), in pages: the run of missing pages after the
    /// faulting one, up to this many, comes with it (lazy-pages gets the one page it asked
    /// for, the store the rest). A workload writing every 2nd page otherwise faults on
    /// every page it touches, and each fault carves one page out of the source's page
    /// pipe, whose lookups grow slower the more it is cut up. 16 pages (64 KiB) add about
    /// half a millisecond to a fault at 1 Gbit/s. 0 = fetch exactly what was asked.
    public var faultReadAheadPages: Int { get { state.withLock { $0.faultReadAheadPages } } set { state.withLock { $0.faultReadAheadPages = Self.clamped(newValue) } } }
    /// A read-ahead becomes one GET: no more pages than a page-server header may name.
    private static func clamped(_ pages: Int) -> Int { min(max(0, pages), PageServerHeader.maxPages) }
    public static let remoteFaultReadAheadPages = 16
    /// Most pages one reply carries. lazy-pages asks for at most 1024 and takes a short
    /// reply by asking for the rest, so a larger GET (a broken or hostile lazy-pages)
    /// costs no more than 4 MiB of buffer instead of up to 4 GiB.
    static let maxReplyPages = 1024
    /// The pages the source serves (its pagemap's lazy entries), per ns pid, sorted. With
    /// them the read-ahead also fills the HOLES of its window: a workload that faults on
    /// every 2nd or 4th page leaves single missing pages behind, and lazy-pages then asks
    /// for them one round trip each (~1 ms through the channel: 1 GiB at stride 2 took
    /// 290 s). The proxy asks for every missing run of the window at once, pipelined, and
    /// only where the source has pages (a GET elsewhere would fail its session). Empty:
    /// read-ahead only extends the requested run. Set before `start()`.
    public var lazyRuns: [Int32: [Range<UInt64>]] { get { state.withLock { $0.lazyRuns } } set { state.withLock { $0.lazyRuns = newValue } } }

    let store: PageStore
    let state: Mutex<State>
    /// Wakes the upstream thread when it sleeps and what it waits for may have changed.
    let work = DispatchSemaphore(value: 0)
    /// Signalled once the session completed or failed; each waiter passes it on.
    private let ended = DispatchSemaphore(value: 0)
    private let finished = DispatchGroup()
    let pageSize = Int(systemPageSize)

    /// A request, from lazy-pages or our own read-ahead; lives only inside `state`.
    final class Pending {
        let request: PageServerHeader
        /// Set when the answer is ready (the request's padding echoed).
        var reply: PageServerHeader?
        let nsPID: Int32
        let vaddr: UInt64
        var pages: Int
        var data: [UInt8] = []
        var ready = false
        let isClose: Bool
        /// Pages asked of the source (>= `pages` with read-ahead).
        var fetchPages = 0
        /// The first page was being fetched (read-ahead) when lazy-pages asked: answered
        /// from the store when it reaches the head of the queue (that fetch is before it).
        var deferred = false
        /// Fetched for the store only: never in the reply queue, nobody waits for it.
        var isPrefetch = false
        /// A GET of the background walk (counted in its window).
        var isWalk = false
        /// What went (or goes, once the source reconnects) to the source for it; sent
        /// again on a new connection until its answer arrived whole.
        var wire: PageServerHeader?
        /// When lazy-pages asked (uptime ns; for the trace).
        var receivedAt: UInt64 = 0
        init(request: PageServerHeader, nsPID: Int32, vaddr: UInt64, pages: Int, isClose: Bool = false) {
            self.request = request; self.nsPID = nsPID; self.vaddr = vaddr; self.pages = pages; self.isClose = isClose
        }
    }
    struct Key: Hashable { var ns: Int32; var vaddr: UInt64 }

    struct State {
        var readAheadPages = 0, faultReadAheadPages = 0
        var lazyRuns: [Int32: [Range<UInt64>]] = [:]
        var onFailure: (@Sendable (String) -> Void)?
        var upstream: (any LazyPageUpstream)?
        var downFD: Int32 = -1
        /// Writes to downFD (which stays ours to close); the downstream thread reads
        /// through a stream of its own.
        var downStream: FileDescriptorStream?
        var stats = LazyProxyStats()
        var queue: [Pending] = [], inFlight: [Pending] = []
        /// Pages already answered (a re-request after a short reply asks only for the rest).
        var delivered = Set<Key>()
        var fetched = Set<Key>()
        /// Pages asked of the source and not yet arrived.
        var fetching = Set<Key>()
        var upstreamError: String?
        var holdingClose = false, heldClose: Pending?
        var failure: String?
        var completed = false, stopping = false, endSignalled = false
        /// The upstream thread is (about to be) asleep on `work`.
        var upstreamIdle = false
        mutating func sleep() -> Step { upstreamIdle = true; return .wait }
        var completedAt: UInt64?
        /// How long a broken connection to the source may stay down while the source
        /// reconnects (0: a break fails the session at once).
        var graceSeconds = 0.0
        /// Which connection to the source is the current one (+1 at each reconnect): an
        /// answer read from an older one is dropped, its request was sent again.
        var upstreamEpoch = 0
        /// Since when (uptime ns) the connection to the source is down, and why.
        var linkDownSince: UInt64?
        var linkDownReason = ""
        var reconnects = 0
        var trace = ProxyTrace()
        var walk = BackgroundWalk()
        /// lazy-pages sent CLOSE: the source gets no new GET after it.
        var closeSeen = false
    }

    /// What the upstream thread needs of the request it reads the answer to, outside the lock.
    struct Fetch: Sendable {
        let isClose: Bool, nsPID: Int32, vaddr: UInt64, pages: Int, fetchPages: Int
        let request: PageServerHeader, upstream: any LazyPageUpstream, epoch: Int
        /// The Pending it was made from (compared, never dereferenced, outside the lock).
        let id: ObjectIdentifier
    }

    /// `upstream` may come later (`attach`), so the proxy and `criu lazy-pages` can be
    /// started before the freeze; `start()` needs it.
    public init(store: PageStore, upstream: LazyPageUpstream? = nil) throws {
        self.store = store
        let connection = try PageServerConnection.make()
        var initial = State(upstream: upstream)
        initial.downFD = connection.ours
        state = Mutex(initial)
        lazyPagesEnd = Mutex(connection.criu)
    }

    deinit {
        let downFD = state.withLock { $0.downFD }
        if downFD >= 0 { Glibc.close(downFD) }
        let end = lazyPagesEnd.withLock { $0 }
        if end >= 0 { Glibc.close(end) }
    }

    /// Hands over lazy-pages' end of the connection, once (-1 after): the caller passes it
    /// to `criu lazy-pages` and closes its own copy after the spawn.
    public func takeLazyPagesEnd() -> Int32 {
        lazyPagesEnd.withLock { fd in defer { fd = -1 }; return fd }
    }

    // MARK: store access shared with the push receiver

    /// Applies one pushed record to the store (thread-safe with the proxy).
    public func apply(_ record: PageRecord) throws -> Int {
        try state.withLock { _ in
            switch record.kind {
            case .pages:
                try record.payload.withUnsafeBytes {
                    try store.store(nsPID: record.nsPID, vaddr: record.vaddr, count: Int(record.pageCount), data: $0)
                }
                return Int(record.pageCount)
            case .zero:
                try store.storeZero(nsPID: record.nsPID, vaddr: record.vaddr, count: Int(record.pageCount))
                return Int(record.pageCount)
            case .drop:
                store.drop(nsPID: record.nsPID, range: record.range)
            case .forgetProcess:
                store.forget(nsPID: record.nsPID)
            case .roundStart, .roundEnd:
                break
            }
            return 0
        }
    }

    public var statistics: LazyProxyStats { state.withLock { $0.stats } }
    /// When CLOSE was answered (DispatchTime nanoseconds).
    public var completedAt: UInt64? { state.withLock { $0.completedAt } }

    // MARK: lifecycle

    public func attach(upstream: LazyPageUpstream) { state.withLock { $0.upstream = upstream } }
    public var hasUpstream: Bool { state.withLock { $0.upstream != nil } }
    /// Why the connection to the source failed, if it did.
    public var upstreamFailure: String? { state.withLock { $0.upstreamError } }

    public func start() {
        precondition(hasUpstream, "attach the upstream before start()")
        for body in [downstreamLoop, upstreamLoop] {
            finished.enter()
            let t = Thread { [self] in body(); finished.leave() }
            t.stackSize = 1 << 20
            t.start()
        }
    }

    public enum Outcome: Equatable, Sendable {
        case completed
        case failed(String)
    }

    /// Waits until every page was delivered (CLOSE answered) or the session failed; nil
    /// on timeout.
    public func wait(timeout: TimeInterval) -> Outcome? {
        guard ended.wait(timeout: .now() + timeout) == .success else { return nil }
        ended.signal()  // the end is for good: the next waiter sees it too
        return state.withLock { $0.completed ? .completed : .failed($0.failure ?? "") }
    }

    /// Simulates (or performs) a network cut between the proxy and the source.
    public func cutUpstream() { state.withLock { $0.upstream }?.abort() }

    /// Ends everything: upstream aborted unless completed, lazy-pages connection closed.
    public func stop() {
        let (done, upstream) = state.withLock { s in
            s.stopping = true
            changed(&s)
            return (s.completed, s.upstream)
        }
        if !done { upstream?.abort() }
        state.withLock { $0.trace.write() }
        let downFD = state.withLock { $0.downFD }
        if downFD >= 0 { shutdown(downFD, Int32(SHUT_RDWR)) }
        _ = finished.wait(timeout: .now() + 10)
    }

    /// The source can no longer serve pages (its daemon restarted and its CRIU went with
    /// it): end the session now instead of waiting out the link's grace period.
    public func sourceGone(_ why: String) { fail(why) }

    func fail(_ why: String) {
        let (first, onFailure) = state.withLock { s in
            let first = s.failure == nil && !s.completed
            if first { s.failure = why }
            changed(&s)
            return (first, s.onFailure)
        }
        if first { onFailure?(why) }
    }

    /// After every change the upstream thread or `wait` may wait for: rings `work` (the
    /// upstream thread looks again) and, once completed or failed, `ended`. Caller holds the lock.
    func changed(_ s: inout State) {
        if s.upstreamIdle { s.upstreamIdle = false; work.signal() }
        if !s.endSignalled && (s.completed || s.failure != nil) {
            s.endSignalled = true
            ended.signal()
        }
    }

    // MARK: downstream: criu lazy-pages

    private func downstreamLoop() {
        let c = state.withLock { $0.downFD }
        let down = FileDescriptorStream(fd: c, owns: false, name: "criu lazy-pages")
        state.withLock { $0.downStream = FileDescriptorStream(fd: c, owns: false, name: "criu lazy-pages") }
        var h = [UInt8](repeating: 0, count: PageServerHeader.size)
        while true {
            // A clean end, a half header or an error: lazy-pages is gone either way.
            let got = (try? h.withUnsafeMutableBytes { try down.readFull($0) }) ?? false
            if !got {
                let (done, stop) = state.withLock { ($0.completed, $0.stopping) }
                if !done && !stop { fail("criu lazy-pages disconnected before every page was delivered") }
                return
            }
            let header: PageServerHeader
            do { header = try PageServerHeader(bytes: h) } catch {
                fail("criu lazy-pages sent a bad header: \(error)")
                return
            }
            if header.isGet {
                guard header.pages > 0, let nsPID = header.nsPID else { fail("criu lazy-pages sent GET with \(header)"); return }
                do { try handleGet(header, nsPID: nsPID) } catch {
                    fail("\(error)")
                    return
                }
            } else if header.isClose {
                handleClose(header: header)
            } else {
                fail("criu lazy-pages sent an unexpected command 0x\(String(header.cmd, radix: 16))")
                return
            }
        }
    }

    private func handleGet(_ header: PageServerHeader, nsPID: Int32) throws {
        let vaddr = header.vaddr, pages = header.pages
        try state.withLock { s in
            s.stats.requests += 1
            s.stats.pagesRequested += pages
            for i in 0..<pages where s.delivered.contains(Key(ns: nsPID, vaddr: vaddr + UInt64(i * pageSize))) {
                s.stats.pagesRequestedTwice += 1
            }
            let p = Pending(request: header, nsPID: nsPID, vaddr: vaddr, pages: pages)
            if s.trace.enabled {
                p.receivedAt = ProxyTrace.now()
                let ahead = s.inFlight.reduce(0) { $0 + $1.fetchPages }
                s.trace.add("get \(nsPID) 0x\(String(vaddr, radix: 16)) \(pages) queued=\(s.queue.count) upstreamPagesAhead=\(ahead)", at: p.receivedAt)
            }
            s.queue.append(p)
            if s.fetching.contains(Key(ns: nsPID, vaddr: vaddr)) {
                p.deferred = true
                return
            }
            if try !answerLocally(p, &s) { try forward(p, &s) }
            try flush(&s)
        }
    }

    /// Answers `p` with the held prefix of its pages, if any. Caller holds the lock.
    private func answerLocally(_ p: Pending, _ s: inout State) throws -> Bool {
        var held = 0
        while held < min(p.pages, Self.maxReplyPages), store.contains(nsPID: p.nsPID, vaddr: p.vaddr + UInt64(held * pageSize)) { held += 1 }
        guard held > 0 else { return false }
        p.data = [UInt8](repeating: 0, count: held * pageSize)
        _ = try p.data.withUnsafeMutableBytes { try store.read(nsPID: p.nsPID, vaddr: p.vaddr, count: held, into: $0) }
        p.reply = try p.request.reply(pages: held)
        p.ready = true
        s.stats.localReplies += 1
        s.stats.pagesServedLocally += held
        if held < p.pages { s.stats.shortReplies += 1 }
        p.pages = held
        return true
    }

    /// Asks the source for the run of pages the store lacks from `p.vaddr` (with
    /// read-ahead for background GETs). Caller holds the lock.
    private func forward(_ p: Pending, _ s: inout State) throws {
        if let upstreamError = s.upstreamError {
            throw GodwitError("page \(p.nsPID):0x\(String(p.vaddr, radix: 16)) is needed from the source, whose connection failed (\(upstreamError))")
        }
        let background = p.pages > 1  // faults ask for one page
        // Read-ahead stops at the end of the address space: a GET near the top must not
        // make the window's addresses wrap (the request itself was checked not to).
        let room = Int(clamping: PageArithmetic.pagesBeforeEnd(of: p.vaddr, pageSize: UInt64(pageSize)))
        let asked = min(p.pages, Self.maxReplyPages)
        var limit = min(room, background ? max(asked, s.readAheadPages) : max(asked, s.faultReadAheadPages))
        // With the walk, lazy-pages' background GETs stay small: a fault queues behind them.
        if background && s.walk.windowPages > 0 { limit = min(limit, s.walk.chunkPages) }
        var missing = 0
        while missing < limit {
            let key = Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(missing * pageSize))
            if store.contains(nsPID: key.ns, vaddr: key.vaddr) || s.fetching.contains(key) { break }
            missing += 1
        }
        p.pages = min(asked, missing)
        p.fetchPages = missing
        for i in 0..<missing { s.fetching.insert(Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(i * pageSize))) }
        p.wire = try p.request.asGet(pages: missing)
        s.inFlight.append(p)
        s.stats.forwardedRequests += 1
        changed(&s)
        try sendUpstream(p, &s)
        if background, s.walk.windowPages == 0, s.readAheadPages > missing {
            let windowEnd = PageArithmetic.end(of: p.vaddr, pages: UInt64(s.readAheadPages), pageSize: UInt64(pageSize)) ?? UInt64.max
            try prefetchHoles(like: p.request, nsPID: p.nsPID, from: p.vaddr + UInt64(missing * pageSize), budget: s.readAheadPages - missing,
                              windowEnd: windowEnd, &s)
        }
    }

    /// GETs for the missing runs of `[from, windowEnd)` inside the source's lazy runs, at
    /// most `budget` pages in all. Caller holds the lock.
    private func prefetchHoles(like header: PageServerHeader, nsPID: Int32, from: UInt64, budget: Int, windowEnd: UInt64,
                               _ s: inout State) throws {
        guard let runs = s.lazyRuns[nsPID], !runs.isEmpty else { return }
        var budget = budget
        var address = from
        // First run ending after `from` (binary search: thousands of GETs, hundreds of runs).
        var lo = 0, hi = runs.count
        while lo < hi { let mid = (lo + hi) / 2; if runs[mid].upperBound <= address { lo = mid + 1 } else { hi = mid } }
        var index = lo
        func missing(_ a: UInt64) -> Bool {
            let key = Key(ns: nsPID, vaddr: a)
            return !store.contains(nsPID: nsPID, vaddr: a) && !s.fetching.contains(key) && !s.fetched.contains(key)
        }
        // Steps never wrap: past the last page there is nothing to fetch.
        func after(_ a: UInt64) -> UInt64? {
            let (next, wrapped) = a.addingReportingOverflow(UInt64(pageSize))
            return wrapped ? nil : next
        }
        while budget > 0, index < runs.count, address < windowEnd {
            let run = runs[index]
            if address < run.lowerBound { address = run.lowerBound; continue }
            if address >= run.upperBound { index += 1; continue }
            guard missing(address) else { guard let next = after(address) else { return }; address = next; continue }
            var count = 0
            var a: UInt64? = address
            while count < budget, let at = a, at < run.upperBound, at < windowEnd, missing(at) { count += 1; a = after(at) }
            let request = try header.asGet(pages: count, vaddr: address)
            let p = Pending(request: request, nsPID: nsPID, vaddr: address, pages: 0)
            p.isPrefetch = true
            p.fetchPages = count
            p.wire = request
            for i in 0..<count { s.fetching.insert(Key(ns: nsPID, vaddr: address + UInt64(i * pageSize))) }
            s.inFlight.append(p)
            s.stats.prefetchRequests += 1
            changed(&s)
            try sendUpstream(p, &s)
            budget -= count
            guard let next = a else { return }
            address = next
        }
    }

    private func handleClose(header: PageServerHeader) {
        let upstream = state.withLock { s -> (any LazyPageUpstream)? in
            let p = Pending(request: header, nsPID: 0, vaddr: 0, pages: 0, isClose: true)
            s.closeSeen = true
            s.queue.append(p)
            if s.holdingClose && s.upstreamError == nil {
                // Before the commit CLOSE must not reach the source: it would complete the
                // dump and kill the source while a rollback may still need it.
                s.heldClose = p
                return nil
            }
            return forwardClose(p, &s)
        }
        if let upstream { sendClose(to: upstream) }
    }

    /// Keep lazy-pages' CLOSE from the source until `releaseClose()` (the commit).
    public func holdClose() { state.withLock { $0.holdingClose = true } }

    public func releaseClose() {
        let upstream = state.withLock { s -> (any LazyPageUpstream)? in
            s.holdingClose = false
            guard let p = s.heldClose else { return nil }
            s.heldClose = nil
            return forwardClose(p, &s)
        }
        if let upstream { sendClose(to: upstream) }
    }

    /// Puts CLOSE in flight and returns where to send it (after the lock), or answers it
    /// at once if the source is gone. Caller holds the lock.
    private func forwardClose(_ p: Pending, _ s: inout State) -> (any LazyPageUpstream)? {
        // Everything was delivered; a source we lost (or can't reach now) can't be told,
        // but it needs nothing: its doomed tasks die with the failed dump.
        if s.upstreamError != nil || s.linkDownSince != nil { answerClose(p, &s); return nil }
        p.wire = .closeRequest
        s.inFlight.append(p)
        changed(&s)
        return s.upstream!
    }

    private func sendClose(to upstream: any LazyPageUpstream) {
        do { try send(.closeRequest, to: upstream) } catch {
            state.withLock { s in
                s.upstreamError = "\(error)"
                // lazy-pages sends one CLOSE, queued until it is answered.
                guard let p = s.queue.first(where: { $0.isClose }) else { try? flush(&s); return }
                s.inFlight.removeAll { $0 === p }
                answerClose(p, &s)
            }
        }
    }

    /// Answers CLOSE with 0 without the source. Caller holds the lock.
    func answerClose(_ p: Pending, _ s: inout State) {
        p.ready = true
        p.data = [0, 0, 0, 0]
        try? flush(&s)
    }

    /// Sends ready replies from the head of the queue. Caller holds the lock.
    func flush(_ s: inout State) throws {
        while let head = s.queue.first {
            if head.deferred {
                // The fetch that held its first page was before it in the queue, so it
                // is done; wait if a later fetch is getting that page again (the first
                // one came back short).
                if s.fetching.contains(Key(ns: head.nsPID, vaddr: head.vaddr)) { return }
                head.deferred = false
                if try !answerLocally(head, &s) { try forward(head, &s) }
            }
            guard head.ready else { return }
            s.queue.removeFirst()
            if head.isClose {
                try writeDown(head.data, s)
                s.completed = true
                s.completedAt = DispatchTime.now().uptimeNanoseconds
                changed(&s)
                continue
            }
            guard let reply = head.reply else { throw GodwitError("page proxy: a ready answer without a header") }
            try writeDown(reply.encode(), s)
            try writeDown(head.data, s)
            if s.trace.enabled {
                let waited = Double(ProxyTrace.now() - head.receivedAt) / 1e6
                s.trace.add("reply \(head.nsPID) 0x\(String(head.vaddr, radix: 16)) \(head.pages) waited=\(String(format: "%.1f", waited))")
            }
            for i in 0..<head.pages { s.delivered.insert(Key(ns: head.nsPID, vaddr: head.vaddr + UInt64(i * pageSize))) }
        }
    }

    /// Caller holds the lock (replies exist only once lazy-pages is connected).
    func writeDown(_ bytes: [UInt8], _ s: State) throws {
        guard let downStream = s.downStream else { throw GodwitError("criu lazy-pages is not connected") }
        try bytes.withUnsafeBytes { try downStream.write($0) }
    }
}
