import Foundation
import GodwitCore
import Memory
@testable import Migration
import Testing

/// What a misbehaving or hostile source can put on the wire: every case gives an error
/// saying what was wrong, never a trap, and never an allocation or a file per claim.
@Suite struct HostilePeerTests {
    let page = systemPageSize
    /// The last page whose end is still an address (vaddr + 4096 <= UInt64.max).
    var lastPage: UInt64 { UInt64.max - 2 * page + 1 }

    func stream(_ records: [PageRecord]) throws -> MemoryByteStream {
        let stream = MemoryByteStream()
        for r in records { try r.encoded().withUnsafeBytes { try stream.write($0) } }
        return stream
    }

    func expectRefused(_ record: PageRecord, _ words: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let reader = PageRecordReader(source: try stream([record]))
        do {
            let read = try reader.next()
            Issue.record("accepted: \(String(describing: read?.kind))", sourceLocation: sourceLocation)
        } catch let error as GodwitError {
            #expect(error.message.contains(words), "\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func recordsOutsideTheirBoundsAreRefused() throws {
        // A zero record of 2^32-1 pages: the store indexed each, tens of GB of memory.
        try expectRefused(PageRecord(kind: .zero, nsPID: 1, vaddr: 0x1000, pageCount: .max, round: 1), "claims 4294967295 pages")
        try expectRefused(PageRecord(kind: .zero, nsPID: 1, vaddr: 0x1000, pageCount: 0, round: 1), "claims 0 pages")
        try expectRefused(PageRecord(kind: .pages, nsPID: 1, vaddr: 0x1000, pageCount: 257, round: 1), "claims 257 pages")
        // `range` (vaddr + count * 4096) trapped.
        try expectRefused(PageRecord(kind: .drop, nsPID: 1, vaddr: lastPage, pageCount: 2, round: 1), "past the end of the address space")
        try expectRefused(PageRecord(kind: .drop, nsPID: 1, vaddr: 0xffff_ffff_0000_0000, pageCount: .max, round: 1), "past the end")
        try expectRefused(PageRecord(kind: .zero, nsPID: 1, vaddr: 0x1001, pageCount: 1, round: 1), "not page aligned")
        try expectRefused(PageRecord(kind: .zero, nsPID: 0, vaddr: 0x1000, pageCount: 1, round: 1), "for process 0")
        try expectRefused(PageRecord(kind: .forgetProcess, nsPID: -7, round: 1), "for process -7")
        // The last page of the address space itself is fine.
        let last = PageRecord(kind: .zero, nsPID: 1, vaddr: lastPage, pageCount: 1, round: 1)
        #expect(try PageRecordReader(source: try stream([last])).next() == last)
        #expect(last.range == lastPage..<(UInt64.max - page + 1))
        // Built by hand, a record that would wrap clamps instead of trapping.
        #expect(PageRecord(kind: .drop, nsPID: 1, vaddr: lastPage, pageCount: 9, round: 1).range.upperBound == UInt64.max)
    }

    @Test func theStoreBoundsProcessesAndPages() throws {
        let store = try PageStore(limits: .init(processes: 8, pages: 1000))
        defer { store.destroy() }
        // A peer naming a new process in every record: one file each, then a clear stop.
        var records = [PageRecord(kind: .roundStart, round: 1)]
        for pid in 1...20 { records.append(PageRecord(kind: .zero, nsPID: Int32(pid), vaddr: 0x1000, pageCount: 1, round: 1)) }
        records.append(PageRecord(kind: .roundEnd, vaddr: 21, pageCount: 20, round: 1))
        let receiver = PreCopyReceiver(reader: PageRecordReader(source: try stream(records)), store: store)
        do {
            _ = try receiver.receiveRound()
            Issue.record("20 processes accepted")
        } catch let error as GodwitError {
            #expect(error.message.contains("more than 8 processes"), "\(error)")
        }
        #expect(store.counts.processes == 8)
        #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory).count == 8)
        // Forgotten processes make room again.
        store.forget(nsPID: 1)
        try store.storeZero(nsPID: 100, vaddr: 0x1000, count: 1)

        // Pages: a claim past the limit is refused before anything is indexed.
        let before = store.counts.pages
        #expect(throws: GodwitError.self) { try store.storeZero(nsPID: 2, vaddr: 0x10_0000, count: 1 << 32) }
        #expect(throws: GodwitError.self) { try store.storeZero(nsPID: 2, vaddr: 0x10_0000, count: 1000) }
        #expect(store.counts.pages == before)
        try store.storeZero(nsPID: 2, vaddr: 0x10_0000, count: 1000 - before)
        #expect(store.counts.pages == 1000)
        // Dropping and forgetting give the room back.
        store.drop(nsPID: 2, range: 0x10_0000..<(0x10_0000 + 100 * page))
        try store.storeZero(nsPID: 3, vaddr: 0x10_0000, count: 100)
        store.forget(nsPID: 3)
        try store.storeZero(nsPID: 4, vaddr: 0x10_0000, count: 100)
        #expect(store.counts.pages == 1000 - 101 + 100, "process 3 held 101 pages")
        #expect(PageStore.Limits().processes == 4096)
    }

    @Test func theStoreChecksAddressesAndSizes() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let one = [UInt8](repeating: 7, count: Int(page))
        #expect(throws: GodwitError.self) {
            try one.withUnsafeBytes { try store.store(nsPID: 1, vaddr: UInt64.max - page + 1, count: 1, data: $0) }
        }
        #expect(throws: GodwitError.self) { try one.withUnsafeBytes { try store.store(nsPID: 1, vaddr: 0x1000, count: 2, data: $0) } }
        #expect(throws: GodwitError.self) { try store.storeZero(nsPID: 1, vaddr: lastPage, count: 2) }
        #expect(throws: GodwitError.self) { try store.storeZero(nsPID: 1, vaddr: 0x1000, count: -1) }
        try one.withUnsafeBytes { try store.store(nsPID: 1, vaddr: lastPage, count: 1, data: $0) }
        // Drops up to the very last address walk without stepping past it.
        store.drop(nsPID: 1, range: (UInt64.max - 10)..<UInt64.max)
        store.drop(nsPID: 1, range: lastPage..<UInt64.max)
        #expect(!store.contains(nsPID: 1, vaddr: lastPage))
        var buffer = [UInt8](repeating: 0, count: Int(page))
        #expect(throws: GodwitError.self) {
            _ = try buffer.withUnsafeMutableBytes { try store.read(nsPID: 1, vaddr: 0x1000, count: 2, into: $0) }
        }
        #expect(throws: GodwitError.self) {
            _ = try buffer.withUnsafeMutableBytes { try store.read(nsPID: 1, vaddr: UInt64.max - page + 1, count: 1, into: $0) }
        }
    }

    // MARK: image transfer

    /// Sends `bytes` as the source would and receives them into a fresh directory.
    func receive(_ bytes: [UInt8], limits: ImageTransfer.Limits = .init()) throws -> (UInt64, [String]) {
        let (a, b) = try FileDescriptorStream.pair()
        try bytes.withUnsafeBytes { try a.write($0) }
        shutdown(a.fd, Int32(SHUT_WR))
        let dir = NSTemporaryDirectory() + "godwit-images-\(UUID().uuidString.prefix(8))"
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let total = try ImageTransfer.receive(from: b.fd, into: dir, limits: limits)
        return (total, try FileManager.default.contentsOfDirectory(atPath: dir).sorted())
    }

    func frame(_ name: [UInt8], size: UInt64, contents: [UInt8]? = nil) -> [UInt8] {
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        return le(UInt32(name.count)) + name + le(size) + (contents ?? [UInt8](repeating: 1, count: Int(min(size, 64))))
    }
    let end: [UInt8] = [0, 0, 0, 0]

    func expectRefused(_ bytes: [UInt8], _ words: String, limits: ImageTransfer.Limits = .init(),
                       sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let got = try receive(bytes, limits: limits)
            Issue.record("accepted: \(got)", sourceLocation: sourceLocation)
        } catch let error as GodwitError {
            #expect(error.message.contains(words), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func imageTransferChecksNamesSizesAndCounts() throws {
        #expect(try receive(frame(Array("inventory.img".utf8), size: 3, contents: [1, 2, 3]) + end) == (3, ["inventory.img"]))
        // Int(UInt64) of the size trapped.
        expectRefused(frame(Array("pages-1.img".utf8), size: .max, contents: []), "claims 18446744073709551615 bytes")
        expectRefused([0xff, 0xff, 0xff, 0xff], "file name of 4294967295 bytes")
        for bad in ["..", ".", "a/b", "../x", "x\u{0}y"] {
            expectRefused(frame(Array(bad.utf8), size: 1) + end, "refused file name")
        }
        expectRefused(frame([0x61, 0xff, 0xfe], size: 1) + end, "not UTF-8")
        expectRefused(frame(Array("a".utf8), size: 1) + frame(Array("a".utf8), size: 1) + end, "sent twice")
        let three = (1...3).flatMap { frame(Array("f\($0)".utf8), size: 1) } + end
        expectRefused(three, "more than 2 files", limits: .init(files: 2))
        expectRefused(three, "more than 2 bytes in all", limits: .init(totalBytes: 2))
        expectRefused(frame(Array("big".utf8), size: 11, contents: []), "at most 10", limits: .init(fileBytes: 10))
        #expect(ImageTransfer.Limits().totalBytes >= HostMemory.pages * systemPageSize)
    }

    // MARK: the lazy page proxy at the top of the address space

    /// A fault and a background GET on the last pages: the read-ahead window used to run
    /// past 2^64 (`vaddr + missing * 4096`, `vaddr + readAhead * 4096`) and trap.
    @Test func theProxyServesTheLastPagesOfTheAddressSpace() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let upstream = FakePageServer(delayMicros: 0)
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.readAheadPages = Int.max  // clamped to what one GET may carry
        #expect(proxy.readAheadPages == 1 << 20)
        proxy.readAheadPages = LazyPageProxy.remoteReadAheadPages
        proxy.faultReadAheadPages = LazyPageProxy.remoteFaultReadAheadPages
        proxy.lazyRuns = [3: [(lastPage - 3 * page)..<(lastPage + page)]]
        proxy.start()
        defer { proxy.stop() }
        let tests = LazyPageProxyTests()
        let client = try tests.connect(proxy)
        try tests.get(client, nsPID: 3, vaddr: lastPage, pages: 1, pad: 1)
        let fault = try tests.reply(client)
        #expect(fault.vaddr == lastPage && fault.pages == 1 && fault.data == FakePageServer.page(lastPage))
        try tests.get(client, nsPID: 3, vaddr: lastPage - 3 * page, pages: 2, pad: 2)
        let background = try tests.reply(client)
        #expect(background.vaddr == lastPage - 3 * page && background.pages == 2)
        #expect(upstream.gets.map(\.vaddr) == [lastPage, lastPage - 3 * page])
        #expect(upstream.gets.map(\.pages) == [1, 3], "read-ahead up to the last page, not past it")
        #expect(proxy.upstreamFailure == nil)
    }

    /// A GET for more than lazy-pages ever asks gets a short reply, so one request can't
    /// make the proxy buffer gigabytes (it used to size the reply by the request).
    @Test func aHugeGetGetsAShortReply() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let upstream = FakePageServer(delayMicros: 0)
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        proxy.readAheadPages = LazyPageProxy.remoteReadAheadPages
        proxy.start()
        defer { proxy.stop() }
        let tests = LazyPageProxyTests()
        let client = try tests.connect(proxy)
        try tests.get(client, nsPID: 4, vaddr: 0x10_0000, pages: 1 << 20, pad: 9)
        let reply = try tests.reply(client)
        #expect(reply.vaddr == 0x10_0000 && reply.pages == LazyPageProxy.maxReplyPages && reply.pad == 9)
        #expect(upstream.gets.map(\.pages) == [LazyPageProxy.maxReplyPages])
        // The rest, asked again, is answered the same way.
        let next = 0x10_0000 + UInt64(LazyPageProxy.maxReplyPages) * page
        try tests.get(client, nsPID: 4, vaddr: next, pages: 1 << 20, pad: 10)
        #expect(try tests.reply(client).pages == LazyPageProxy.maxReplyPages)
    }
}
