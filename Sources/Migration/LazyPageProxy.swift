import Checkpoint
import Foundation
import GodwitCore
import Memory

/// The destination-side page proxy: `criu lazy-pages` connects to it as if it were the
/// source's page server. Every GET is answered from the page store when its first page
/// is held (a short reply covering the held prefix; lazy-pages asks again for the rest),
/// otherwise the longest run of pages the store lacks is fetched from the upstream, so a
/// page the destination has is never fetched. Replies leave in request order: local
/// answers queue behind outstanding forwarded ones. Fetched pages go into the store too,
/// so nothing is fetched twice. CLOSE from lazy-pages (every page delivered) is passed
/// upstream and answered 0.
///
/// Upstream failure: if nothing more is needed from the source (no fetch outstanding, and
/// every later GET can be answered locally) the proxy serves on; a GET that needs the
/// source then fails the session (`onFailure`) WITHOUT closing the lazy-pages connection,
/// so that the caller can kill the restored tasks before lazy-pages dies and the kernel
/// would map zero pages in place of the missing ones.
public final class LazyPageProxy: @unchecked Sendable {
    public let port: Int
    public private(set) var stats = LazyProxyStats()
    /// Called once, on a proxy thread, when the session can't go on.
    public var onFailure: ((String) -> Void)?
    /// Read-ahead for background GETs (more than one page), in pages: the proxy asks the
    /// source for up to this many pages the store lacks from the requested address (the
    /// source clamps the answer at the end of its page run), answers lazy-pages what it
    /// asked, and keeps the rest for its next GETs. Why: lazy-pages keeps one background
    /// GET in flight and drops its size back to 64 KiB after every page fault, so with a
    /// faulting application its background rate is 64 KiB per round trip; through the
    /// daemons' TLS channel and the source's relay a round trip costs several times
    /// CRIU's direct TCP one. 0 = fetch exactly what was asked. Faults (1-page GETs) are
    /// enlarged only by `faultReadAheadPages`. Set before `start()`.
    public var readAheadPages = 0
    /// What a destination uses when the source is reached through the daemons' channel:
    /// 1 MiB, ~8 ms on a 1 Gbit/s link (what a page fault may wait behind it).
    public static let remoteReadAheadPages = 256
    /// Read-ahead for faults (1-page GETs), in pages: the run of missing pages after the
    /// faulting one, up to this many, comes with it (lazy-pages gets the one page it asked
    /// for, the store the rest). A workload writing every 2nd page otherwise faults on
    /// every page it touches, and each fault carves one page out of the source's page
    /// pipe, whose lookups grow slower the more it is cut up. 16 pages (64 KiB) add about
    /// half a millisecond to a fault at 1 Gbit/s. 0 = fetch exactly what was asked.
    public var faultReadAheadPages = 0
    public static let remoteFaultReadAheadPages = 16
    /// The pages the source serves (its pagemap's lazy entries), per ns pid, sorted. With
    /// them the read-ahead also fills the HOLES of its window: a workload that faults on
    /// every 2nd or 4th page leaves single missing pages behind, and lazy-pages then asks
    /// for them one round trip each (~1 ms through the channel: 1 GiB at stride 2 took
    /// 290 s). The proxy asks for every missing run of the window at once, pipelined, and
    /// only where the source has pages (a GET elsewhere would fail its session). Empty:
    /// read-ahead only extends the requested run. Set before `start()`.
    public var lazyRuns: [Int32: [Range<UInt64>]] = [:]

    private let store: PageStore
    private var upstreamLink: LazyPageUpstream?
    private var upstream: LazyPageUpstream { upstreamLink! }
    private let listenFD: Int32
    private var downFD: Int32 = -1
    private var downStream: FileDescriptorStream?  // over downFD, which stays ours to close
    private let lock = NSCondition()
    private let writeLock = NSLock()
    private let pageSize = Int(systemPageSize)

    private final class Pending {
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
        init(request: PageServerHeader, nsPID: Int32, vaddr: UInt64, pages: Int, isClose: Bool = false) {
            self.request = request; self.nsPID = nsPID; self.vaddr = vaddr; self.pages = pages; self.isClose = isClose
        }
    }
    private var queue: [Pending] = []
    private var inFlight: [Pending] = []
    private struct Key: Hashable { var ns: Int32; var vaddr: UInt64 }
    /// Pages already answered (a re-request after a short reply asks only for the rest).
    private var delivered = Set<Key>()
    private var fetched = Set<Key>()
    /// Pages asked of the source and not yet arrived.
    private var fetching = Set<Key>()
    private var upstreamError: String?
    private var holdingClose = false
    private var heldClose: Pending?
    private var failure: String?
    private var completed = false
    private var stopping = false
    public private(set) var completedAt: UInt64?
    private var threads: [Thread] = []
    private let finished = DispatchGroup()

    /// `upstream` may come later (`attach`), so the proxy and `criu lazy-pages` can be
    /// started before the freeze; `start()` needs it.
    public init(store: PageStore, upstream: LazyPageUpstream? = nil, host: String = "127.0.0.1") throws {
        self.store = store
        self.upstreamLink = upstream
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw GodwitError.errno("socket") }
        var one: Int32 = 1
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        inet_pton(AF_INET, host, &addr.sin_addr)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(s, $0, len) == 0 && listen(s, 1) == 0 && getsockname(s, $0, &len) == 0
            }
        }
        guard ok else {
            let e = GodwitError.errno("page proxy listen on \(host)")
            Glibc.close(s)
            throw e
        }
        listenFD = s
        port = Int(UInt16(bigEndian: addr.sin_port))
    }

    deinit {
        if downFD >= 0 { Glibc.close(downFD) }
        Glibc.close(listenFD)
    }

    // MARK: store access shared with the push receiver

    /// Applies one pushed record to the store (thread-safe with the proxy).
    public func apply(_ record: PageRecord) throws -> Int {
        lock.lock(); defer { lock.unlock() }
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

    public var statistics: LazyProxyStats { lock.lock(); defer { lock.unlock() }; return stats }

    // MARK: lifecycle

    public func attach(upstream: LazyPageUpstream) { upstreamLink = upstream }
    public var hasUpstream: Bool { upstreamLink != nil }
    /// Why the connection to the source failed, if it did.
    public var upstreamFailure: String? { lock.lock(); defer { lock.unlock() }; return upstreamError }

    public func start() {
        precondition(upstreamLink != nil, "attach the upstream before start()")
        for body in [downstreamLoop, upstreamLoop] {
            finished.enter()
            let t = Thread { [self] in body(); finished.leave() }
            t.stackSize = 1 << 20
            threads.append(t)
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
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock(); defer { lock.unlock() }
        while !completed && failure == nil {
            if !lock.wait(until: deadline) { return nil }
        }
        return completed ? .completed : .failed(failure ?? "")
    }

    /// Simulates (or performs) a network cut between the proxy and the source.
    public func cutUpstream() { upstreamLink?.abort() }

    /// Ends everything: upstream aborted unless completed, lazy-pages connection closed.
    public func stop() {
        lock.lock()
        stopping = true
        let done = completed
        lock.broadcast()
        lock.unlock()
        if !done { upstreamLink?.abort() }
        shutdown(listenFD, Int32(SHUT_RDWR))
        if downFD >= 0 { shutdown(downFD, Int32(SHUT_RDWR)) }
        _ = finished.wait(timeout: .now() + 10)
    }

    private func fail(_ why: String) {
        lock.lock()
        let first = failure == nil && !completed
        if first { failure = why }
        lock.broadcast()
        lock.unlock()
        if first { onFailure?(why) }
    }

    // MARK: downstream: criu lazy-pages

    private func downstreamLoop() {
        var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
        while true {
            let r = Glibc.poll(&pfd, 1, 200)
            lock.lock(); let stop = stopping; lock.unlock()
            if stop { return }
            if r > 0 { break }
        }
        let c = accept(listenFD, nil, nil)
        guard c >= 0 else { fail("page proxy: accept failed (errno \(errno))"); return }
        _ = fcntl(c, F_SETFD, FD_CLOEXEC)
        var one: Int32 = 1
        setsockopt(c, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let down = FileDescriptorStream(fd: c, owns: false, name: "criu lazy-pages")
        lock.lock(); downFD = c; downStream = down; lock.unlock()
        var h = [UInt8](repeating: 0, count: PageServerHeader.size)
        while true {
            // A clean end, a half header or an error: lazy-pages is gone either way.
            let got = (try? h.withUnsafeMutableBytes { try down.readFull($0) }) ?? false
            if !got {
                lock.lock(); let done = completed; let stop = stopping; lock.unlock()
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
        lock.lock()
        defer { lock.unlock() }
        stats.requests += 1
        stats.pagesRequested += pages
        for i in 0..<pages where delivered.contains(Key(ns: nsPID, vaddr: vaddr + UInt64(i * pageSize))) {
            stats.pagesRequestedTwice += 1
        }
        let p = Pending(request: header, nsPID: nsPID, vaddr: vaddr, pages: pages)
        queue.append(p)
        if fetching.contains(Key(ns: nsPID, vaddr: vaddr)) {
            p.deferred = true
            return
        }
        if try !answerLocally(p) { try forward(p) }
        try flushLocked()
    }

    /// Answers `p` with the held prefix of its pages, if any. Caller holds `lock`.
    private func answerLocally(_ p: Pending) throws -> Bool {
        var held = 0
        while held < p.pages, store.contains(nsPID: p.nsPID, vaddr: p.vaddr + UInt64(held * pageSize)) { held += 1 }
        guard held > 0 else { return false }
        p.data = [UInt8](repeating: 0, count: held * pageSize)
        _ = try p.data.withUnsafeMutableBytes { try store.read(nsPID: p.nsPID, vaddr: p.vaddr, count: held, into: $0) }
        p.reply = try p.request.reply(pages: held)
        p.ready = true
        stats.localReplies += 1
        stats.pagesServedLocally += held
        if held < p.pages { stats.shortReplies += 1 }
        p.pages = held
        return true
    }

    /// Asks the source for the run of pages the store lacks from `p.vaddr` (with
    /// read-ahead for background GETs). Caller holds `lock`.
    private func forward(_ p: Pending) throws {
        if let upstreamError {
            throw GodwitError("page \(p.nsPID):0x\(String(p.vaddr, radix: 16)) is needed from the source, whose connection failed (\(upstreamError))")
        }
        let background = p.pages > 1  // faults ask for one page
        let limit = background ? max(p.pages, readAheadPages) : max(p.pages, faultReadAheadPages)
        var missing = 0
        while missing < limit {
            let key = Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(missing * pageSize))
            if store.contains(nsPID: key.ns, vaddr: key.vaddr) || fetching.contains(key) { break }
            missing += 1
        }
        p.pages = min(p.pages, missing)
        p.fetchPages = missing
        for i in 0..<missing { fetching.insert(Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(i * pageSize))) }
        let request = try p.request.asGet(pages: missing)
        inFlight.append(p)
        stats.forwardedRequests += 1
        lock.broadcast()
        try send(request)
        if background, readAheadPages > missing {
            try prefetchHoles(like: p.request, nsPID: p.nsPID, from: p.vaddr + UInt64(missing * pageSize),
                              budget: readAheadPages - missing, windowEnd: p.vaddr + UInt64(readAheadPages * pageSize))
        }
    }

    /// GETs for the missing runs of `[from, windowEnd)` inside the source's lazy runs, at
    /// most `budget` pages in all. Caller holds `lock`.
    private func prefetchHoles(like header: PageServerHeader, nsPID: Int32, from: UInt64, budget: Int, windowEnd: UInt64) throws {
        guard let runs = lazyRuns[nsPID], !runs.isEmpty else { return }
        var budget = budget
        var address = from
        // First run ending after `from` (binary search: thousands of GETs, hundreds of runs).
        var lo = 0, hi = runs.count
        while lo < hi { let mid = (lo + hi) / 2; if runs[mid].upperBound <= address { lo = mid + 1 } else { hi = mid } }
        var index = lo
        func missing(_ a: UInt64) -> Bool {
            let key = Key(ns: nsPID, vaddr: a)
            return !store.contains(nsPID: nsPID, vaddr: a) && !fetching.contains(key) && !fetched.contains(key)
        }
        while budget > 0, index < runs.count, address < windowEnd {
            let run = runs[index]
            if address < run.lowerBound { address = run.lowerBound; continue }
            if address >= run.upperBound { index += 1; continue }
            guard missing(address) else { address += UInt64(pageSize); continue }
            var count = 0
            var a = address
            while count < budget, a < run.upperBound, a < windowEnd, missing(a) { count += 1; a += UInt64(pageSize) }
            let request = try header.asGet(pages: count, vaddr: address)
            let p = Pending(request: request, nsPID: nsPID, vaddr: address, pages: 0)
            p.isPrefetch = true
            p.fetchPages = count
            for i in 0..<count { fetching.insert(Key(ns: nsPID, vaddr: address + UInt64(i * pageSize))) }
            inFlight.append(p)
            stats.prefetchRequests += 1
            lock.broadcast()
            try send(request)
            budget -= count
            address = a
        }
    }

    private func handleClose(header: PageServerHeader) {
        lock.lock()
        let p = Pending(request: header, nsPID: 0, vaddr: 0, pages: 0, isClose: true)
        queue.append(p)
        let upstreamDown = upstreamError != nil
        if upstreamDown {
            // Everything was delivered; the source can't be told, but it needs nothing.
            p.ready = true
            p.data = [0, 0, 0, 0]
            try? flushLocked()
            lock.unlock()
            return
        }
        if holdingClose {
            // Before the commit CLOSE must not reach the source: it would complete the
            // dump and kill the source while a rollback may still need it.
            heldClose = p
            lock.unlock()
            return
        }
        lock.unlock()
        forwardClose(p)
    }

    /// Keep lazy-pages' CLOSE from the source until `releaseClose()` (the commit).
    public func holdClose() { lock.lock(); holdingClose = true; lock.unlock() }

    public func releaseClose() {
        lock.lock()
        holdingClose = false
        let p = heldClose
        heldClose = nil
        lock.unlock()
        if let p { forwardClose(p) }
    }

    private func forwardClose(_ p: Pending) {
        lock.lock()
        if upstreamError != nil {
            p.ready = true
            p.data = [0, 0, 0, 0]
            try? flushLocked()
            lock.unlock()
            return
        }
        inFlight.append(p)
        lock.broadcast()
        lock.unlock()
        do { try send(.closeRequest) } catch {
            lock.lock()
            upstreamError = "\(error)"
            inFlight.removeAll { $0 === p }
            p.ready = true
            p.data = [0, 0, 0, 0]
            try? flushLocked()
            lock.unlock()
        }
    }

    /// Sends ready replies from the head of the queue. Caller holds `lock`.
    private func flushLocked() throws {
        while let head = queue.first {
            if head.deferred {
                // The fetch that held its first page was before it in the queue, so it
                // is done; wait if a later fetch is getting that page again (the first
                // one came back short).
                if fetching.contains(Key(ns: head.nsPID, vaddr: head.vaddr)) { return }
                head.deferred = false
                if try !answerLocally(head) { try forward(head) }
            }
            guard head.ready else { return }
            queue.removeFirst()
            if head.isClose {
                try writeDown(head.data)
                completed = true
                completedAt = DispatchTime.now().uptimeNanoseconds
                lock.broadcast()
                continue
            }
            guard let reply = head.reply else { throw GodwitError("page proxy: a ready answer without a header") }
            try writeDown(reply.encode())
            try writeDown(head.data)
            for i in 0..<head.pages { delivered.insert(Key(ns: head.nsPID, vaddr: head.vaddr + UInt64(i * pageSize))) }
        }
    }

    /// Caller holds `lock` (replies exist only once lazy-pages is connected).
    private func writeDown(_ bytes: [UInt8]) throws {
        guard let downStream else { throw GodwitError("criu lazy-pages is not connected") }
        try bytes.withUnsafeBytes { try downStream.write($0) }
    }

    // MARK: upstream: the source

    private func upstreamLoop() {
        var h = [UInt8](repeating: 0, count: PageServerHeader.size)
        while true {
            lock.lock()
            while inFlight.isEmpty && !stopping && !completed && failure == nil { lock.wait() }
            guard let head = inFlight.first, !stopping, failure == nil else { lock.unlock(); return }
            lock.unlock()
            do {
                if head.isClose {
                    var status: Int32 = -1
                    try withUnsafeMutableBytes(of: &status) { try upstream.receive($0) }
                    upstream.finish()
                    lock.lock()
                    inFlight.removeFirst()
                    if status != 0 { upstreamError = "the source answered CLOSE with \(status)" }
                    head.data = [0, 0, 0, 0]
                    head.ready = true
                    try flushLocked()
                    lock.unlock()
                    return
                }
                try h.withUnsafeMutableBytes { try upstream.receive($0) }
                let answer = try PageServerHeader(bytes: h)
                guard answer.isPresentPages, answer.vaddr == head.vaddr, answer.nsPID == head.nsPID,
                      answer.pages > 0, answer.pages <= head.fetchPages else {
                    throw GodwitError("the source's page server answered GET(\(head.nsPID), 0x\(String(head.vaddr, radix: 16)), \(head.fetchPages)) with \(answer)",
                                      hint: "both hosts must run the same CRIU version")
                }
                let nr = answer.pages
                var data = [UInt8](repeating: 0, count: answer.byteCount)
                try data.withUnsafeMutableBytes { try upstream.receive($0) }
                // Before the lock: the catch below takes it.
                let reply = try head.request.reply(pages: min(nr, head.pages))
                lock.lock()
                inFlight.removeFirst()
                for i in 0..<head.fetchPages { fetching.remove(Key(ns: head.nsPID, vaddr: head.vaddr + UInt64(i * pageSize))) }
                stats.pagesFetched += nr
                let answered = min(nr, head.pages)
                if answered < head.pages && !head.isPrefetch { stats.shortReplies += 1 }
                for i in 0..<nr {
                    let a = head.vaddr + UInt64(i * pageSize)
                    if !fetched.insert(Key(ns: head.nsPID, vaddr: a)).inserted { stats.pagesFetchedTwice += 1 }
                    if store.contains(nsPID: head.nsPID, vaddr: a) { stats.fetchedButAlreadyLocal += 1 }
                }
                do {
                    try data.withUnsafeBytes { try store.store(nsPID: head.nsPID, vaddr: head.vaddr, count: nr, data: $0) }
                } catch {
                    // Only the "all local" bookkeeping suffers; the reply still goes out.
                }
                head.data = answered == nr ? data : Array(data[0..<(answered * pageSize)])
                head.pages = answered
                head.reply = reply
                head.ready = true
                try flushLocked()
                lock.unlock()
            } catch {
                lock.lock()
                let stop = stopping
                upstreamError = upstreamError ?? "\(error)"
                // Prefetches nobody waits for are not a reason to fail; a GET deferred
                // behind one now asks the source itself (and fails, if it needs it).
                for p in inFlight where p.isPrefetch {
                    for i in 0..<p.fetchPages { fetching.remove(Key(ns: p.nsPID, vaddr: p.vaddr + UInt64(i * pageSize))) }
                }
                inFlight.removeAll { $0.isPrefetch }
                let needed = inFlight.contains { !$0.isClose }
                var deferredFailure: String?
                if !needed, let close = inFlight.first(where: { $0.isClose }) {
                    // Every page was delivered; only the source's goodbye is missing.
                    inFlight.removeAll()
                    close.data = [0, 0, 0, 0]
                    close.ready = true
                    try? flushLocked()
                } else if !needed {
                    do { try flushLocked() } catch { deferredFailure = "\(error)" }
                }
                lock.unlock()
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

    private func send(_ header: PageServerHeader) throws {
        try header.encode().withUnsafeBytes { try upstream.send($0) }
    }
}
