import Foundation
import GodwitCore
import Memory
@testable import Migration
import Testing

/// An in-process stand-in for CRIU's lazy page server: answers GETs (slowly) with pages
/// whose bytes are a function of their address, CLOSE with 0; records what it was asked.
final class FakePageServer: LazyPageUpstream, @unchecked Sendable {
    let cond = NSCondition()
    var outgoing: [UInt8] = []
    var gets: [(vaddr: UInt64, pages: Int)] = []
    var closed = false, finished = false, aborted = false
    let delayMicros: UInt32

    init(delayMicros: UInt32 = 50_000) { self.delayMicros = delayMicros }

    static func page(_ vaddr: UInt64) -> [UInt8] { [UInt8](repeating: UInt8(truncatingIfNeeded: vaddr >> 12), count: 4096) }

    /// What CRIU's page server answers to `request`: CLOSE with status 0, a GET with its
    /// header (ADD_F | PE_PRESENT) and the pages (nil `get` for CLOSE).
    static func answer(_ request: UnsafeRawBufferPointer) -> (get: (ns: UInt64, vaddr: UInt64, pages: Int)?, reply: [UInt8]) {
        let cmd = request.loadUnaligned(fromByteOffset: 0, as: UInt32.self)
        guard cmd != 0x1023 else { return (nil, [0, 0, 0, 0]) }
        let nr = request.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
        let vaddr = request.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
        let ns = request.loadUnaligned(fromByteOffset: 24, as: UInt64.self)
        var reply = [UInt8](request)
        reply.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(0x0004_0006), toByteOffset: 0, as: UInt32.self) }
        for i in 0..<Int(nr) { reply += page(vaddr + UInt64(i * 4096)) }
        return ((ns, vaddr, Int(nr)), reply)
    }

    func send(_ bytes: UnsafeRawBufferPointer) throws {
        let (get, reply) = Self.answer(bytes)
        cond.lock(); defer { cond.unlock() }
        if let get { gets.append((get.vaddr, get.pages)) } else { closed = true }
        outgoing += reply
        cond.broadcast()
    }

    func receive(_ buffer: UnsafeMutableRawBufferPointer) throws {
        if buffer.count == 32 { usleep(delayMicros) }
        cond.lock(); defer { cond.unlock() }
        while outgoing.count < buffer.count && !aborted { cond.wait() }
        if aborted { throw GodwitError("fake upstream aborted") }
        buffer.copyBytes(from: outgoing[0..<buffer.count])
        outgoing.removeFirst(buffer.count)
    }

    func finish() { cond.lock(); finished = true; cond.unlock() }
    func abort() { cond.lock(); aborted = true; cond.broadcast(); cond.unlock() }
}

struct LazyPageProxyTests {
    /// Plays lazy-pages: takes its end of the proxy's connection (the proxy never listens).
    func connect(_ proxy: LazyPageProxy) throws -> FileDescriptorStream {
        let fd = proxy.takeLazyPagesEnd()
        guard fd >= 0 else { throw GodwitError("the proxy's lazy-pages end was already taken") }
        return FileDescriptorStream(fd: fd)
    }

    func get(_ c: FileDescriptorStream, nsPID: UInt64, vaddr: UInt64, pages: UInt64, pad: UInt32) throws {
        var h = [UInt8](repeating: 0, count: 32)
        h.withUnsafeMutableBytes { p in
            p.storeBytes(of: UInt32(7), toByteOffset: 0, as: UInt32.self)
            p.storeBytes(of: pad, toByteOffset: 4, as: UInt32.self)
            p.storeBytes(of: pages, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: vaddr, toByteOffset: 16, as: UInt64.self)
            p.storeBytes(of: nsPID, toByteOffset: 24, as: UInt64.self)
        }
        try h.withUnsafeBytes { try c.write($0) }
    }

    func reply(_ c: FileDescriptorStream) throws -> (cmd: UInt32, pad: UInt32, pages: Int, vaddr: UInt64, data: [UInt8]) {
        var h = [UInt8](repeating: 0, count: 32)
        _ = try h.withUnsafeMutableBytes { try c.readFull($0) }
        let (cmd, pad, nr, vaddr) = h.withUnsafeBytes { p in
            (p.loadUnaligned(fromByteOffset: 0, as: UInt32.self), p.loadUnaligned(fromByteOffset: 4, as: UInt32.self),
             p.loadUnaligned(fromByteOffset: 8, as: UInt64.self), p.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        }
        var data = [UInt8](repeating: 0, count: Int(nr) * 4096)
        _ = try data.withUnsafeMutableBytes { try c.readFull($0) }
        return (cmd, pad, Int(nr), vaddr, data)
    }

    /// Replies leave in request order (a local answer waits behind a slow forwarded one),
    /// padding is echoed, held pages are served locally with short replies, only missing
    /// runs are fetched, CLOSE is passed on and answered 0.
    @Test func fifoLocalShortRepliesAndClose() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let a: UInt64 = 0x10_0000, b: UInt64 = 0x20_0000, c: UInt64 = 0x30_0000
        let local = [UInt8](repeating: 0x5A, count: 2 * 4096)
        try local.withUnsafeBytes { try store.store(nsPID: 5, vaddr: a, count: 2, data: $0) }
        try FakePageServer.page(c + 4096).withUnsafeBytes { try store.store(nsPID: 5, vaddr: c + 4096, count: 1, data: $0) }
        let upstream = FakePageServer()
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.start()
        defer { proxy.stop() }
        let client = try connect(proxy)
        try get(client, nsPID: 5, vaddr: b, pages: 2, pad: 0xAB01)   // missing: forwarded (slow)
        try get(client, nsPID: 5, vaddr: a, pages: 4, pad: 0xAB02)   // 2 held: short local reply
        try get(client, nsPID: 5, vaddr: c, pages: 3, pad: 0xAB03)   // c missing, c+1 held: fetch 1
        let r1 = try reply(client), r2 = try reply(client), r3 = try reply(client)
        #expect(r1.vaddr == b && r1.pages == 2 && r1.pad == 0xAB01 && r1.cmd == 0x0004_0006)
        #expect(r1.data == FakePageServer.page(b) + FakePageServer.page(b + 4096))
        #expect(r2.vaddr == a && r2.pages == 2 && r2.pad == 0xAB02 && r2.data == local, "local answer queued behind the forwarded one")
        #expect(r3.vaddr == c && r3.pages == 1 && r3.pad == 0xAB03 && r3.data == FakePageServer.page(c))
        // The rest of the short replies, as lazy-pages would ask: now all local.
        try get(client, nsPID: 5, vaddr: c + 4096, pages: 2, pad: 0xAB04)
        let r4 = try reply(client)
        #expect(r4.vaddr == c + 4096 && r4.pages == 1 && r4.data == FakePageServer.page(c + 4096))
        #expect(upstream.gets.map(\.vaddr) == [b, c] && upstream.gets.map(\.pages) == [2, 1], "only missing pages fetched")
        var close = [UInt8](repeating: 0, count: 32)
        close.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(0x1023), toByteOffset: 0, as: UInt32.self) }
        try close.withUnsafeBytes { try client.write($0) }
        var status: Int32 = -1
        _ = try withUnsafeMutableBytes(of: &status) { try client.readFull($0) }
        #expect(status == 0)
        #expect(proxy.wait(timeout: 10) == .completed)
        #expect(upstream.closed && upstream.finished && !upstream.aborted)
        let s = proxy.statistics
        #expect(s.pagesFetched == 3 && s.pagesServedLocally == 3 && s.pagesFetchedTwice == 0 && s.pagesRequestedTwice == 0)
        #expect(store.contains(nsPID: 5, vaddr: b) && store.contains(nsPID: 5, vaddr: c), "fetched pages are kept")
    }

    /// Nobody but its own lazy-pages reaches the proxy: it opens no listening socket (any
    /// local user could otherwise read the container's memory or end the session), and
    /// the FORCE_CLOSE lazy-pages sends over an inherited socket ends it like CLOSE.
    @Test func theProxyNeverListensAndForceCloseEndsTheSession() throws {
        let before = try Self.listeningSocketsOfThisProcess()
        let store = try PageStore()
        defer { store.destroy() }
        let upstream = FakePageServer()
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.start()
        defer { proxy.stop() }
        #expect(try Self.listeningSocketsOfThisProcess() == before)
        let client = try connect(proxy)
        #expect(proxy.takeLazyPagesEnd() == -1, "lazy-pages' end is handed out once")
        try get(client, nsPID: 5, vaddr: 0x10_0000, pages: 1, pad: 1)
        #expect(try reply(client).data == FakePageServer.page(0x10_0000))
        var close = [UInt8](repeating: 0, count: 32)
        close.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(0x1024), toByteOffset: 0, as: UInt32.self) }
        try close.withUnsafeBytes { try client.write($0) }
        var status: Int32 = -1
        _ = try withUnsafeMutableBytes(of: &status) { try client.readFull($0) }
        #expect(status == 0)
        #expect(proxy.wait(timeout: 10) == .completed)
        #expect(upstream.closed && upstream.finished && !upstream.aborted)
    }

    /// Inodes of this process's TCP sockets in LISTEN state (IPv4 and IPv6).
    static func listeningSocketsOfThisProcess() throws -> Set<String> {
        var listening = Set<String>()
        for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
            guard let text = try? String(contentsOfFile: table, encoding: .utf8) else { continue }
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                if f.count > 9, f[3] == "0A" { listening.insert(String(f[9])) }
            }
        }
        var mine = Set<String>()
        for fd in try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/" + fd),
                  target.hasPrefix("socket:[") else { continue }
            let inode = String(target.dropFirst(8).dropLast())
            if listening.contains(inode) { mine.insert(inode) }
        }
        return mine
    }

    /// A faulting workload leaves every 2nd page held: a background GET then gets its
    /// 1-page run, and the holes of the read-ahead window are fetched with it, pipelined,
    /// only inside the source's lazy runs, never a held page, and the next GETs are local.
    @Test func readAheadFillsTheHolesOfItsWindowInsideTheSourcesRuns() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let base: UInt64 = 0x40_0000
        // The source serves pages 0..<12 and 20..<24; pages 0, 2, 4, ... were faulted in.
        for i in stride(from: 0, to: 24, by: 2) {
            let a = base + UInt64(i * 4096)
            try FakePageServer.page(a).withUnsafeBytes { try store.store(nsPID: 9, vaddr: a, count: 1, data: $0) }
        }
        let upstream = FakePageServer(delayMicros: 1000)
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.readAheadPages = 32
        proxy.lazyRuns = [9: [base..<(base + 12 * 4096), (base + 20 * 4096)..<(base + 24 * 4096)]]
        proxy.start()
        defer { proxy.stop() }
        let client = try connect(proxy)
        try get(client, nsPID: 9, vaddr: base + 4096, pages: 16, pad: 1)   // background: page 1 missing
        let r1 = try reply(client)
        #expect(r1.vaddr == base + 4096 && r1.pages == 1 && r1.data == FakePageServer.page(base + 4096))
        // Odd pages 3..11 and 21, 23: one GET each, nothing between the runs, no held page.
        let expected = [1, 3, 5, 7, 9, 11, 21, 23].map { base + UInt64($0 * 4096) }
        #expect(poll(timeout: 5) { upstream.cond.withLock { upstream.gets.count } == expected.count })
        #expect(upstream.cond.withLock { upstream.gets.map(\.vaddr) } == expected)
        #expect(upstream.cond.withLock { upstream.gets.allSatisfy { $0.pages == 1 } })
        #expect(poll(timeout: 5) { proxy.statistics.pagesFetched == expected.count })
        // What lazy-pages asks next is answered from the store.
        try get(client, nsPID: 9, vaddr: base + 3 * 4096, pages: 1, pad: 2)
        let r2 = try reply(client)
        #expect(r2.pages == 1 && r2.data == FakePageServer.page(base + 3 * 4096))
        let s = proxy.statistics
        #expect(s.prefetchRequests == expected.count - 1 && s.forwardedRequests == 1 && s.pagesFetchedTwice == 0)
        #expect(s.fetchedButAlreadyLocal == 0)
    }

    /// Upstream cut with a fetch outstanding: the session fails (container lost), and the
    /// lazy-pages connection is NOT closed by the proxy (the caller kills the tasks first).
    @Test func upstreamCutWithPagesOutstandingFails() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let upstream = FakePageServer(delayMicros: 300_000)
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        let failures = FailureBox()
        proxy.onFailure = { failures.add($0) }
        proxy.start()
        defer { proxy.stop() }
        let client = try connect(proxy)
        try get(client, nsPID: 1, vaddr: 0x1000, pages: 1, pad: 0)
        usleep(50_000)
        proxy.cutUpstream()
        guard case .failed(let why)? = proxy.wait(timeout: 10) else {
            Issue.record("the session should fail")
            return
        }
        #expect(why.contains("outstanding"))
        #expect(failures.count == 1)
        var pfd = pollfd(fd: client.fd, events: Int16(POLLIN), revents: 0)
        #expect(Glibc.poll(&pfd, 1, 100) == 0, "the proxy keeps the lazy-pages connection open")
    }
}

final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private var reasons: [String] = []
    func add(_ r: String) { lock.lock(); reasons.append(r); lock.unlock() }
    var count: Int { lock.lock(); defer { lock.unlock() }; return reasons.count }
}
