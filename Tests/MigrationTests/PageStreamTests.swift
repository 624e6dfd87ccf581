import Foundation
import GodwitCore
import Memory
@testable import Migration
import Testing

/// Framing, page store and the round bookkeeping, without any container.
@Suite struct PageStreamTests {
    let page = Int(systemPageSize)

    func pages(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<(count * page)).map { UInt8(truncatingIfNeeded: $0 / 7) &+ seed }
    }

    @Test func recordsRoundTripAndChecksumsCatchCorruption() throws {
        let data = pages(3, seed: 9)
        let record = PageRecord(kind: .pages, nsPID: 42, vaddr: 0x7f00_0000_1000, pageCount: 3, round: 2, payload: data)
        var bytes = record.encoded()
        #expect(bytes.count == PageRecord.headerSize + 3 * page + PageRecord.trailerSize)
        let stream = MemoryByteStream()
        try bytes.withUnsafeBytes { try stream.write($0) }
        #expect(try PageRecordReader(source: stream).next() == record)

        bytes[PageRecord.headerSize + 100] ^= 1  // one flipped bit in the payload
        let corrupt = MemoryByteStream()
        try bytes.withUnsafeBytes { try corrupt.write($0) }
        #expect(throws: GodwitError.self) { _ = try PageRecordReader(source: corrupt).next() }
    }

    @Test func zeroAndDropRecordsCarryNoPayload() throws {
        let z = PageRecord(kind: .zero, nsPID: 1, vaddr: 0x1000, pageCount: UInt32(PageRecord.maxPages), round: 1)
        #expect(z.encoded().count == 32, "a record's worth of zero pages costs 32 bytes")
        let d = PageRecord(kind: .drop, nsPID: 1, vaddr: 0x1000, pageCount: 100_000, round: 1)
        #expect(d.encoded().count == 32, "so does dropping 100,000 pages")
    }

    @Test func truncatedStreamIsAnError() throws {
        let record = PageRecord(kind: .pages, nsPID: 1, vaddr: 0x1000, pageCount: 1, round: 1, payload: pages(1, seed: 1))
        let stream = MemoryByteStream()
        let bytes = record.encoded()
        try bytes.withUnsafeBytes { try stream.write(UnsafeRawBufferPointer(rebasing: $0[0..<100])) }
        #expect(throws: GodwitError.self) { _ = try PageRecordReader(source: stream).next() }
        #expect(try PageRecordReader(source: MemoryByteStream()).next() == nil, "clean end of stream")
    }

    @Test func storeOverwritesDropsAndReusesSlots() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let a = pages(4, seed: 1), b = pages(2, seed: 50)
        try a.withUnsafeBytes { try store.store(nsPID: 7, vaddr: 0x10000, count: 4, data: $0) }
        try store.storeZero(nsPID: 7, vaddr: 0x20000, count: 3)
        #expect(store.counts == PageStore.Counts(pages: 7, zeroPages: 3, processes: 1, fileBytes: UInt64(4 * page)))
        // A later round overwrites pages 1 and 2 in place.
        try b.withUnsafeBytes { try store.store(nsPID: 7, vaddr: 0x10000 + UInt64(page), count: 2, data: $0) }
        var out = [UInt8](repeating: 0xEE, count: 5 * page)
        let held = try out.withUnsafeMutableBytes { try store.read(nsPID: 7, vaddr: 0x10000, count: 5, into: $0) }
        #expect(held == [true, true, true, true, false])
        #expect(Array(out[0..<page]) == Array(a[0..<page]))
        #expect(Array(out[page..<(3 * page)]) == b)
        #expect(Array(out[(3 * page)..<(4 * page)]) == Array(a[(3 * page)..<(4 * page)]))
        #expect(out[4 * page] == 0xEE, "a page not held is left alone")
        // Dropping frees slots; a new page reuses one instead of growing the file.
        store.drop(nsPID: 7, range: 0x10000..<(0x10000 + UInt64(2 * page)))
        try pages(1, seed: 3).withUnsafeBytes { try store.store(nsPID: 7, vaddr: 0x90000, count: 1, data: $0) }
        #expect(store.counts.fileBytes == UInt64(4 * page))
        #expect(store.counts.pages == 6)
        // Zero pages read back as zeros; a data page turned zero frees its slot.
        var z = [UInt8](repeating: 0xEE, count: page)
        _ = try z.withUnsafeMutableBytes { try store.read(nsPID: 7, vaddr: 0x20000, count: 1, into: $0) }
        #expect(z.allSatisfy { $0 == 0 })
        store.forget(nsPID: 7)
        #expect(store.counts.pages == 0 && !store.contains(nsPID: 7, vaddr: 0x90000))
    }

    @Test func receiverAppliesRoundsAndChecksTheirCounts() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let stream = MemoryByteStream()
        let w = PageRecordWriter(sink: stream)
        let data = pages(2, seed: 4)
        try w.write(.roundStart, round: 1)
        try w.write(.forgetProcess, nsPID: 3, round: 1)
        try data.withUnsafeBytes { try w.write(.pages, nsPID: 3, vaddr: 0x4000, pageCount: 2, round: 1, payload: $0) }
        try w.write(.zero, nsPID: 3, vaddr: 0x8000, pageCount: 5, round: 1)
        try w.write(.roundEnd, vaddr: 4, pageCount: 7, round: 1)
        // Round 2 lies about its count: a lost record must be detected.
        try w.write(.roundStart, round: 2)
        try w.write(.drop, nsPID: 3, vaddr: 0x8000, pageCount: 1, round: 2)
        try w.write(.roundEnd, vaddr: 5, pageCount: 0, round: 2)
        let receiver = PreCopyReceiver(reader: PageRecordReader(source: stream), store: store)
        let first = try #require(try receiver.receiveRound())
        #expect(first.dataPages == 2 && first.zeroPages == 5 && first.forgottenProcesses == 1)
        #expect(store.counts.pages == 7)
        #expect(throws: GodwitError.self) { _ = try receiver.receiveRound() }
    }

    @Test func zeroDetection() {
        var p = [UInt8](repeating: 0, count: page)
        #expect(p.withUnsafeBytes { PageHash.isZero($0) })
        p[page - 1] = 1
        #expect(!p.withUnsafeBytes { PageHash.isZero($0) })
        p[page - 1] = 0; p[9] = 0x80
        #expect(!p.withUnsafeBytes { PageHash.isZero($0) })
    }
}

@Suite struct PageRangesTests {
    func r(_ a: UInt64, _ b: UInt64) -> Range<UInt64> { (a * 4096)..<(b * 4096) }

    @Test func normalizesAndCombines() {
        let a = PageRanges([r(5, 8), r(0, 2), r(1, 3), r(8, 9)])
        #expect(a.ranges == [r(0, 3), r(5, 9)])
        let b = PageRanges([r(2, 6), r(10, 12)])
        #expect(a.intersection(b).ranges == [r(2, 3), r(5, 6)])
        #expect(a.subtracting(b).ranges == [r(0, 2), r(6, 9)])
        #expect(a.union(b).ranges == [r(0, 9), r(10, 12)])
        #expect(a.pageCount == 7 && a.contains(6 * 4096) && !a.contains(4 * 4096))
        #expect(PageRanges([r(0, 600)]).chunks(maxPages: 256).count == 3)
        #expect(PageRanges([r(0, 10)]).subtracting(PageRanges([r(2, 3), r(5, 6), r(9, 20)])).ranges == [r(0, 2), r(3, 5), r(6, 9)])
    }

    @Test func changedMappingsAreDetected() {
        func m(_ a: UInt64, _ b: UInt64, _ perm: String = "rw-p", offset: UInt64 = 0, path: String = "") -> MemoryMapping {
            ProcessMaps.parse("\(String(a * 4096, radix: 16))-\(String(b * 4096, radix: 16)) \(perm) \(String(offset, radix: 16)) 00:00 0 \(path)")[0]
        }
        let old = [m(10, 20), m(30, 40, path: "[heap]"), m(50, 60)]
        // Heap grew in place, [10,20) unchanged, [50,60) replaced by a moved mapping of another
        // size (mremap), a new mapping appeared at 70.
        let new = [m(10, 20), m(30, 45, path: "[heap]"), m(50, 58, offset: 0x1000), m(70, 80)]
        let changed = ContainerDirtyTracker.changedRanges(old: old, new: new)
        // The heap's old part is unchanged; only its growth is new.
        #expect(changed.ranges == [r(40, 45), r(50, 58), r(70, 80)], "\(changed)")
        // mprotect splitting a mapping changes permissions of a part: that part counts as changed.
        let split = ContainerDirtyTracker.changedRanges(old: [m(10, 20)], new: [m(10, 15), m(15, 20, "r--p")])
        #expect(split.ranges == [r(15, 20)])
    }
}
