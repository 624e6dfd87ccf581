import Foundation
import GodwitCore
import Memory

// Target page-records: what a source sends on the pre-copy and push channels, through
// PageRecordReader and PreCopyReceiver into a PageStore (built with
// Sources/Migration/{PageRecord,PageStore,PreCopyReceiver}.swift).
//
// Input: records as [control u8][24-byte header][payload byte]. The driver adds each
// record's payload (count pages of the payload byte, for a pages record) and its XXH3
// checksum, so the fuzzer gets past the checksum to the interesting part; control bit 0
// keeps the version byte as given (else 1), bit 1 corrupts the checksum, bit 2 cuts the
// stream inside the record. A compressed record (kind 6) gets a real zstd frame of (count pages of
// the payload byte, one page more or less with control bit 3 or 4) and its length word;
// bit 5 flips a byte of that frame, bit 6 replaces the length with the next 4 input bytes.
// (Also built with PageRecord+Zstd.swift and PageCompression.swift, linked to libzstd.)

final class BytesSource: ByteSource {
    let bytes: [UInt8]
    var position = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    func readFull(_ buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        if position == bytes.count, buffer.count > 0 { return false }
        guard buffer.count <= bytes.count - position else { throw GodwitError("ended inside a record") }
        bytes.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[position..<(position + buffer.count)])) }
        position += buffer.count
        return true
    }
}

let storeDirectory = "/dev/shm/godwit-fuzz-pages-\(getpid())"
let pageSize = Int(systemPageSize)

func wire(_ input: [UInt8]) -> [UInt8] {
    var input = FuzzBytes(input)
    var stream: [UInt8] = []
    var payloadBudget = 512  // pages per input: keeps one execution to a few MB
    while !input.isEmpty {
        let control = input.integer(UInt8.self)
        var header = input.take(PageRecord.headerSize)
        header += [UInt8](repeating: 0, count: PageRecord.headerSize - header.count)
        if control & 1 == 0 { header[1] = PageRecord.version }
        let fill = input.integer(UInt8.self)
        let count = header[16..<20].enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
        var payload: [UInt8] = []
        if header[0] == PageRecord.Kind.pages.rawValue, (1...PageRecord.maxPages).contains(count), count <= payloadBudget {
            payload = [UInt8](repeating: fill, count: count * pageSize)
            payloadBudget -= count
        }
        if header[0] == PageRecord.zstdPagesKind, count <= payloadBudget {
            let pages = max(0, count + (control & 8 != 0 ? 1 : 0) - (control & 16 != 0 ? 1 : 0))
            payloadBudget -= pages
            var frame = zstdFrame([UInt8](repeating: fill, count: pages * pageSize))
            if control & 32 != 0, !frame.isEmpty { frame[Int(fill) % frame.count] ^= 0x5A }
            var length = UInt32(frame.count)
            if control & 64 != 0 { length = input.integer(UInt32.self) }
            payload = littleEndian(length) + frame
        }
        var sum = header.withUnsafeBytes { h in payload.withUnsafeBytes { p in PageHash.xxh3([h, p]) } }
        if control & 2 != 0 { sum ^= 1 }
        var record = header + payload + littleEndian(sum)
        if control & 4 != 0 { record = Array(record.prefix(Int(fill) % record.count)) }
        stream += record
        if control & 4 != 0 { break }
    }
    return stream
}

func zstdFrame(_ data: [UInt8]) -> [UInt8] {
    guard !data.isEmpty, let compressor = try? Zstd.Compressor() else { return [] }
    var out = [UInt8](repeating: 0, count: data.count + 4096)
    let n = data.withUnsafeBytes { d in out.withUnsafeMutableBytes { compressor.compress(d, into: $0) } }
    return Array(out.prefix(n ?? 0))
}

func fuzzOne(_ bytes: [UInt8]) {
    let stream = wire(bytes)
    let limits = PageStore.Limits(processes: 16, pages: 4096)
    guard let store = try? PageStore(directory: storeDirectory, limits: limits) else { fatalError("no page store at \(storeDirectory)") }
    defer { store.destroy() }
    // Every record the reader accepts is within the bounds the store relies on.
    let reader = PageRecordReader(source: BytesSource(stream))
    while let record = try? reader.next() {
        if [.pages, .zero, .drop].contains(record.kind) {
            let end = record.vaddr.addingReportingOverflow(UInt64(record.pageCount) * systemPageSize)
            fuzzCheck(!end.overflow && record.range == record.vaddr..<end.partialValue, "record range \(record)")
            fuzzCheck(record.nsPID > 0, "record for pid \(record.nsPID)")
        }
        if record.kind == .pages || record.kind == .zero {
            fuzzCheck(record.pageCount <= UInt32(PageRecord.maxPages), "\(record.pageCount) pages in a \(record.kind) record")
        }
        fuzzCheck(record.payload.count == (record.kind == .pages ? Int(record.pageCount) * pageSize : 0), "payload size")
    }
    let receiver = PreCopyReceiver(reader: PageRecordReader(source: BytesSource(stream)), store: store)
    while true {
        guard let receipt = try? receiver.receiveRound() else { break }
        fuzzCheck(receipt.records >= 2, "a round of \(receipt.records) records")
    }
    let counts = store.counts
    fuzzCheck(counts.processes <= limits.processes, "\(counts.processes) processes held")
    fuzzCheck(counts.pages <= limits.pages, "\(counts.pages) pages held")
    // Whatever is held reads back.
    var buffer = [UInt8](repeating: 0, count: 4 * pageSize)
    for pid in store.nsPIDs {
        for address in store.addresses(nsPID: pid).prefix(8) {
            let held = try? buffer.withUnsafeMutableBytes { try store.read(nsPID: pid, vaddr: address, count: 1, into: $0) }
            fuzzCheck(held == [true], "page \(pid):\(address) held but not readable")
        }
    }
}

func fuzzSeeds() -> [String: [UInt8]] {
    func record(_ kind: PageRecord.Kind?, pid: Int32 = 7, vaddr: UInt64 = 0x40_0000, count: UInt32 = 0, round: UInt32 = 1,
                fill: UInt8 = 0xAB) -> [UInt8] {
        // nil: the compressed kind.
        [0] + PageRecord.header(rawKind: kind?.rawValue ?? PageRecord.zstdPagesKind, nsPID: pid, vaddr: vaddr, pageCount: count, round: round) + [fill]
    }
    let round = record(.roundStart) + record(.forgetProcess) + record(.pages, count: 2)
        + record(.zero, vaddr: 0x50_0000, count: 3) + record(.drop, vaddr: 0x40_1000, count: 1)
        + record(.roundEnd, vaddr: 5, count: 5)
    let top = record(.roundStart, round: 2) + record(.zero, pid: 9, vaddr: UInt64.max - 2 * systemPageSize + 1, count: 1, round: 2)
        + record(.drop, pid: 9, vaddr: 0xffff_ffff_0000_0000, count: .max, round: 2) + record(.roundEnd, vaddr: 3, count: 1, round: 2)
    let manyProcesses = record(.roundStart) + (1...20).flatMap { record(.zero, pid: $0, count: 1) } + record(.roundEnd, vaddr: 21, count: 20)
    let compressed = record(.roundStart) + record(nil, count: 4) + [8] + Array(record(nil, vaddr: 0x60_0000, count: 2).dropFirst())
        + record(.roundEnd, vaddr: 4, count: 6)
    return ["round": round, "top": top, "processes": manyProcesses, "zstd": compressed]
}
