import Checkpoint
import Foundation
import GodwitCore

/// The proxy's own background transfer: a walk over the source's lazy pagemap runs
/// (`lazyRuns`), independent of lazy-pages' requests, that keeps a bounded number of pages
/// in flight upstream. Why: lazy-pages keeps one background GET in flight and shrinks it to
/// 64 KiB on every fault, so through the daemons' channel post-copy ran at a third of the
/// link rate; pipelining hides the channel's round trip. Why bounded: the source's page
/// server answers in order, so a fault sent now waits behind everything already asked;
/// with `windowPages` in flight a fault waits for at most that much (1 MiB: ~9 ms at
/// 1 Gbit/s), not for megabytes. lazy-pages' own GETs are answered from the store once the
/// walk got there, or deferred while the walk is fetching their first page (see
/// `Pending.deferred`); replies keep request order and every page is still fetched once,
/// because the walk skips what is held, being fetched or fetched.
///
/// Processes are walked smallest first: the small ones (init, a network responder) are
/// local within milliseconds of the restore, instead of each of their first faults after
/// the commit waiting a round trip behind the large ones' transfer.
///
/// Runs on the upstream thread, under the proxy's lock, each time it looks for the next
/// answer to read (an answer frees room in the window).
struct BackgroundWalk {
    /// Pages the walk may have asked of the source and not received; 0 = no walk.
    var windowPages = 0
    /// Pages per GET.
    var chunkPages = 64
    var inFlightPages = 0
    var order: [(ns: Int32, runs: [Range<UInt64>])]?
    var process = 0, run = 0
    var address: UInt64 = 0
    var finished = false
    /// The unanswered tails of short answers (the source clamps a GET at the end of one of
    /// its page buffers): asked again before the cursor moves on.
    var retry: [(ns: Int32, vaddr: UInt64, pages: Int)] = []
}

extension LazyPageProxy {
    /// Pages the background walk keeps in flight upstream; 0 (the default) leaves the
    /// background transfer to lazy-pages and the read-ahead. With a walk, lazy-pages' own
    /// background GETs are forwarded at most `backgroundChunkPages` at a time (a short
    /// reply: it asks again for the rest, by then usually local) and get no read-ahead,
    /// so that they too stay small ahead of a fault. Needs `lazyRuns`. Set before `start()`.
    public var backgroundWindowPages: Int {
        get { state.withLock { $0.walk.windowPages } }
        set { state.withLock { $0.walk.windowPages = min(max(0, newValue), PageServerHeader.maxPages) } }
    }
    /// Pages per GET of the walk (at most the window). Set before `start()`.
    public var backgroundChunkPages: Int {
        get { state.withLock { $0.walk.chunkPages } }
        set { state.withLock { $0.walk.chunkPages = min(max(1, newValue), Self.maxReplyPages) } }
    }
    /// What a destination uses through the daemons' channel: 1 MiB in flight in GETs of
    /// 256 KiB (four at once), which kept a 1 Gbit/s link busy.
    public static let remoteBackgroundWindowPages = 256
    public static let remoteBackgroundChunkPages = 64

    /// Puts walk GETs in flight until the window is full or every page is held, asked
    /// or fetched. Caller holds the lock.
    func walkAhead(_ s: inout State) {
        guard s.walk.windowPages > 0, !s.walk.finished else { return }
        guard s.upstreamError == nil, s.linkDownSince == nil, s.failure == nil, !s.completed, !s.stopping, !s.closeSeen else { return }
        if s.walk.order == nil {
            // Smallest process first; ties by pid, so the order is the same on every run.
            // Adjacent pagemap entries are merged: CRIU splits one mapping into many small
            // entries, and a GET per entry made the walk as slow as lazy-pages' own.
            s.walk.order = s.lazyRuns.map { (ns: $0.key, runs: Self.merged($0.value)) }.sorted {
                let a = $0.runs.reduce(0) { $0 + $1.count }, b = $1.runs.reduce(0) { $0 + $1.count }
                return a != b ? a < b : $0.ns < $1.ns
            }
        }
        let chunk = min(s.walk.chunkPages, s.walk.windowPages)
        while s.walk.inFlightPages < s.walk.windowPages {
            guard let next = nextMissingRun(&s, atMost: min(chunk, s.walk.windowPages - s.walk.inFlightPages)) else {
                s.walk.finished = true
                return
            }
            let p: Pending
            do {
                let request = try PageServerHeader.get(nsPID: next.ns, vaddr: next.vaddr, pages: next.pages)
                p = Pending(request: request, nsPID: next.ns, vaddr: next.vaddr, pages: 0)
                p.wire = request
            } catch {
                // Cannot happen for pagemap runs; lazy-pages still fetches whatever is left.
                s.walk.finished = true
                return
            }
            p.isPrefetch = true
            p.isWalk = true
            p.fetchPages = next.pages
            for i in 0..<next.pages { s.fetching.insert(Key(ns: next.ns, vaddr: next.vaddr + UInt64(i * pageSize))) }
            s.inFlight.append(p)
            s.walk.inFlightPages += next.pages
            s.stats.backgroundRequests += 1
            do { try sendUpstream(p, &s) } catch {
                // No grace: the upstream thread's read fails on the same connection and
                // ends the session; the walk stops here.
                s.walk.finished = true
                return
            }
        }
    }

    static func merged(_ runs: [Range<UInt64>]) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for run in runs.sorted(by: { $0.lowerBound < $1.lowerBound }) {
            if let last = out.last, run.lowerBound <= last.upperBound {
                out[out.count - 1] = last.lowerBound..<max(last.upperBound, run.upperBound)
            } else {
                out.append(run)
            }
        }
        return out
    }

    /// The walk's next run of pages nobody has or asked for, at most `atMost` long, inside
    /// one pagemap run; advances the cursor past it. Caller holds the lock.
    private func nextMissingRun(_ s: inout State, atMost: Int) -> (ns: Int32, vaddr: UInt64, pages: Int)? {
        guard let order = s.walk.order else { return nil }
        let step = UInt64(pageSize)
        func missing(_ ns: Int32, _ a: UInt64) -> Bool {
            let key = Key(ns: ns, vaddr: a)
            return !store.contains(nsPID: ns, vaddr: a) && !s.fetching.contains(key) && !s.fetched.contains(key)
        }
        while let tail = s.walk.retry.first {
            var from = tail.vaddr, left = tail.pages
            while left > 0, !missing(tail.ns, from) { from += step; left -= 1 }
            var count = 0
            while count < min(left, atMost), missing(tail.ns, from + UInt64(count) * step) { count += 1 }
            if count == 0 || count == left { s.walk.retry.removeFirst() } else {
                s.walk.retry[0] = (tail.ns, from + UInt64(count) * step, left - count)
            }
            if count > 0 { return (tail.ns, from, count) }
        }
        while s.walk.process < order.count {
            let (ns, runs) = order[s.walk.process]
            while s.walk.run < runs.count {
                let run = runs[s.walk.run]
                if s.walk.address < run.lowerBound { s.walk.address = run.lowerBound }
                // Runs end page-aligned below the top of the address space (pagemap), so
                // `address + step` stays below `upperBound` or reaches it: no wrap.
                while s.walk.address < run.upperBound, !missing(ns, s.walk.address) { s.walk.address += step }
                guard s.walk.address < run.upperBound else { s.walk.run += 1; continue }
                let from = s.walk.address
                var count = 0
                while count < atMost, s.walk.address < run.upperBound, missing(ns, s.walk.address) {
                    count += 1
                    s.walk.address += step
                }
                return (ns, from, count)
            }
            s.walk.process += 1
            s.walk.run = 0
            s.walk.address = 0
        }
        return nil
    }
}
