import Foundation
import GodwitCore
import Memory

// The compressed page record, kind `PageRecord.zstdPagesKind`: the header of a `.pages` record (pageCount =
// pages after decompression), then
//
//     24  u32 frameLength     1 ..< pageCount*4096: a frame that doesn't shrink is never sent
//     28  ...                 one zstd frame of exactly pageCount*4096 bytes
//      .  u64 checksum        XXH3-64 of header + frameLength + frame (the wire bytes)
//
// The checksum covers what crossed the link, so a damaged record is refused before zstd
// sees it; the frame must then expand to exactly the promised pages, no more, no less.

extension PageRecordWriter {
    /// Sends `pages` as a compressed record if the policy wants it and the frame is
    /// smaller; false: the caller sends them raw.
    func writeCompressed(nsPID: pid_t, vaddr: UInt64, pageCount: UInt32, round: UInt32,
                         pages: UnsafeRawBufferPointer, policy: PageCompressionPolicy) throws -> Bool {
        guard policy.shouldCompress(), pages.count > Int(systemPageSize) / 2 else { return false }
        if compressor == nil { compressor = try Zstd.Compressor() }
        if frameBuffer == nil {
            frameBuffer = .allocate(byteCount: PageRecord.maxPages * Int(systemPageSize), alignment: 16)
        }
        guard let compressor, let frameBuffer else { return false }
        let t0 = DispatchTime.now().uptimeNanoseconds
        // One byte short of the raw size: zstd refuses a frame that doesn't shrink.
        let room = UnsafeMutableRawBufferPointer(rebasing: frameBuffer[0..<(pages.count - 1)])
        let size = compressor.compress(pages, into: room)
        policy.noteAttempt(raw: pages.count, compressed: size, nanos: DispatchTime.now().uptimeNanoseconds - t0)
        guard let size else { return false }
        var length = UInt32(size).littleEndian
        try withUnsafeBytes(of: &length) { prefix in
            try writeFramed(PageRecord.zstdPagesKind, nsPID: nsPID, vaddr: vaddr, pageCount: pageCount, round: round,
                            payload: UnsafeRawBufferPointer(rebasing: frameBuffer[0..<size]), prefix: prefix)
        }
        policy.noteSent(pages: Int(pageCount), raw: pages.count, wire: size + 4)
        return true
    }
}

extension PageRecordReader {
    /// The rest of a compressed record whose header (already checked: a real process,
    /// 1 to maxPages aligned pages) is `header`, as the `.pages` record it stands for.
    func readCompressed(header: [UInt8], nsPID: Int32, vaddr: UInt64, count: UInt32, round: UInt32) throws -> PageRecord {
        let rawSize = Int(count) * Int(systemPageSize)
        var lengthBytes = [UInt8](repeating: 0, count: 4)
        guard try lengthBytes.withUnsafeMutableBytes({ try source.readFull($0) }) else {
            throw GodwitError("page stream ended before a compressed record's length")
        }
        let length = Int(UInt32(littleEndian: lengthBytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) }))
        guard length >= 1, length < rawSize else {
            throw GodwitError("page stream: a compressed record of \(count) pages claims a \(length)-byte frame (1 to \(rawSize - 1) allowed)")
        }
        var frame = [UInt8](repeating: 0, count: length)
        guard try frame.withUnsafeMutableBytes({ try source.readFull($0) }) else {
            throw GodwitError("page stream ended before a compressed record's frame")
        }
        var sum: UInt64 = 0
        guard try withUnsafeMutableBytes(of: &sum, { try source.readFull($0) }) else {
            throw GodwitError("page stream ended before a record's checksum")
        }
        let expected = header.withUnsafeBytes { hb in
            lengthBytes.withUnsafeBytes { lb in frame.withUnsafeBytes { fb in PageHash.xxh3([hb, lb, fb]) } }
        }
        guard UInt64(littleEndian: sum) == expected else {
            throw GodwitError("page stream: checksum mismatch in a compressed record for process \(nsPID) at 0x\(String(vaddr, radix: 16))",
                              hint: "the transport corrupted data; the migration must be retried")
        }
        if decompressor == nil { decompressor = try Zstd.Decompressor() }
        var payload = [UInt8](repeating: 0, count: rawSize)
        do {
            try frame.withUnsafeBytes { fb in
                try payload.withUnsafeMutableBytes { try decompressor!.decompress(fb, into: $0) }
            }
        } catch let error as GodwitError {
            throw GodwitError("page stream: a compressed record for process \(nsPID) at 0x\(String(vaddr, radix: 16)) does not decompress: \(error.message)",
                              hint: "the source sent a damaged frame; the migration must be retried")
        }
        bytesRead += UInt64(header.count + 4 + length + 8)
        compressedRecords += 1
        return PageRecord(kind: .pages, nsPID: nsPID, vaddr: vaddr, pageCount: count, round: round, payload: payload)
    }
}
