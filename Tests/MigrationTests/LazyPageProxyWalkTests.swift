import Foundation
import GodwitCore
import Memory
@testable import Migration
import Testing

/// A stand-in for CRIU's page server whose answers leave only when the test lets them:
/// what is in flight at any moment is exactly what was asked and not yet released.
final class GatedPageServer: LazyPageUpstream, @unchecked Sendable {
    let cond = NSCondition()
    private var outgoing: [UInt8] = []
    private(set) var gets: [(ns: UInt64, vaddr: UInt64, pages: Int)] = []
    /// Answers (headers) the proxy may still read.
    private var released = 0
    private var aborted = false

    func send(_ bytes: UnsafeRawBufferPointer) throws {
        let (get, reply) = FakePageServer.answer(bytes)
        cond.lock(); defer { cond.unlock() }
        if let get { gets.append(get) }
        outgoing += reply
        cond.broadcast()
    }

    func receive(_ buffer: UnsafeMutableRawBufferPointer) throws {
        cond.lock(); defer { cond.unlock() }
        if buffer.count == 32 {
            while released == 0 && !aborted { cond.wait() }
            released -= 1
        }
        while outgoing.count < buffer.count && !aborted { cond.wait() }
        if aborted { throw GodwitError("gated upstream aborted") }
        buffer.copyBytes(from: outgoing[0..<buffer.count])
        outgoing.removeFirst(buffer.count)
    }

    func release(_ answers: Int) { cond.lock(); released += answers; cond.broadcast(); cond.unlock() }
    var asked: [(ns: UInt64, vaddr: UInt64, pages: Int)] { cond.withLock { gets } }
    func finish() {}
    func abort() { cond.lock(); aborted = true; cond.broadcast(); cond.unlock() }
}

struct LazyPageProxyWalkTests {
    let client = LazyPageProxyTests()

    /// The background walk keeps several GETs in flight (its window, no more), smallest
    /// process first; a fault goes out at once past the full window; replies to lazy-pages
    /// keep request order (a GET deferred behind the walk's fetch, then a fault, then a
    /// local one); every page is fetched once.
    @Test func walkPipelinesWithinItsWindowAndFaultsGoOutAtOnce() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let big: UInt64 = 0x100_0000, small: UInt64 = 0x200_0000
        let upstream = GatedPageServer()
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.lazyRuns = [7: [big..<(big + 40 * 4096)], 3: [small..<(small + 4 * 4096)]]
        proxy.backgroundWindowPages = 16
        proxy.backgroundChunkPages = 4
        proxy.start()
        defer { upstream.release(1000); proxy.stop() }
        let c = try client.connect(proxy)
        // Nothing answered yet: four GETs of four pages in flight, the small process first.
        #expect(poll(timeout: 5) { upstream.asked.count == 4 })
        usleep(100_000)
        let first = upstream.asked
        #expect(first.count == 4, "the walk stays within its window")
        #expect(first.map(\.ns) == [3, 7, 7, 7] && first.allSatisfy { $0.pages == 4 })
        #expect(first.map(\.vaddr) == [small, big, big + 4 * 4096, big + 8 * 4096])
        // lazy-pages: a GET whose first page the walk is fetching (deferred), a fault far
        // ahead (forwarded at once, past the full window), a GET of a page the walk has
        // asked for too (deferred, answered after the fault).
        try client.get(c, nsPID: 7, vaddr: big + 4 * 4096, pages: 8, pad: 1)
        try client.get(c, nsPID: 7, vaddr: big + 30 * 4096, pages: 1, pad: 2)
        try client.get(c, nsPID: 3, vaddr: small + 4096, pages: 1, pad: 3)
        #expect(poll(timeout: 5) { upstream.asked.count == 5 })
        #expect(upstream.asked.last.map { $0.ns == 7 && $0.vaddr == big + 30 * 4096 } == true, "the fault is not held behind the walk")
        upstream.release(1000)
        let r1 = try client.reply(c), r2 = try client.reply(c), r3 = try client.reply(c)
        #expect(r1.pad == 1 && r1.vaddr == big + 4 * 4096 && r1.pages == 4, "short: the walk's chunk held four")
        var held: [UInt8] = []
        for i in 4..<8 { held += FakePageServer.page(big + UInt64(i * 4096)) }
        #expect(r1.data == held)
        #expect(r2.pad == 2 && r2.vaddr == big + 30 * 4096 && r2.pages == 1 && r2.data == FakePageServer.page(big + 30 * 4096))
        #expect(r3.pad == 3 && r3.vaddr == small + 4096 && r3.pages == 1 && r3.data == FakePageServer.page(small + 4096))
        // The walk finishes the rest: every page once.
        #expect(poll(timeout: 10) { proxy.statistics.pagesFetched == 44 })
        let asked = upstream.asked
        var pages: [UInt64: Int] = [:]
        for g in asked { for i in 0..<g.pages { pages[g.vaddr + UInt64(i * 4096), default: 0] += 1 } }
        #expect(pages.count == 44 && pages.values.allSatisfy { $0 == 1 }, "each page asked of the source once")
        let s = proxy.statistics
        #expect(s.pagesFetchedTwice == 0 && s.backgroundRequests == asked.count - 1)
        for i in 0..<40 { #expect(store.contains(nsPID: 7, vaddr: big + UInt64(i * 4096))) }
    }

    /// With the walk on, lazy-pages' own background GET is fetched at most one walk chunk
    /// at a time (short reply, no read-ahead), so it can't put megabytes ahead of a fault.
    @Test func lazyPagesBackgroundGetsStaySmallWithTheWalk() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let base: UInt64 = 0x300_0000
        let upstream = GatedPageServer()
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.readAheadPages = 256
        // The walk has a full window on another process, so lazy-pages' GET is its own.
        proxy.lazyRuns = [1: [0x10_0000..<(0x10_0000 + 8 * 4096)], 2: [base..<(base + 512 * 4096)]]
        proxy.backgroundWindowPages = 8
        proxy.backgroundChunkPages = 8
        proxy.start()
        defer { upstream.release(1000); proxy.stop() }
        let c = try client.connect(proxy)
        #expect(poll(timeout: 5) { upstream.asked.count == 1 })
        try client.get(c, nsPID: 2, vaddr: base + 256 * 4096, pages: 200, pad: 9)
        #expect(poll(timeout: 5) { upstream.asked.count == 2 })
        usleep(100_000)
        #expect(upstream.asked.count == 2, "no read-ahead nor hole prefetch")
        #expect(upstream.asked.last.map { $0.vaddr == base + 256 * 4096 && $0.pages == 8 } == true)
        upstream.release(2)
        let r = try client.reply(c)
        #expect(r.pad == 9 && r.pages == 8)
    }
}
