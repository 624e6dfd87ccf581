import API
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Testing

/// The compressed page record's codec, the adaptive policy and the bandwidth cap, without
/// any container.
@Suite struct PageCompressionTests {
    let page = Int(systemPageSize)

    /// Pages zstd shrinks a lot: one random word, the rest counting up.
    func compressible(_ count: Int, seed: UInt64) -> [UInt8] {
        var words = [UInt64](repeating: 0, count: count * page / 8)
        for i in words.indices { words[i] = i % (page / 8) == 0 ? seed &* 0x9e37_79b9_7f4a_7c15 &+ UInt64(i) : UInt64(i % 512) }
        return words.withUnsafeBytes { Array($0) }
    }

    func random(_ count: Int) -> [UInt8] {
        var g = SystemRandomNumberGenerator()
        return (0..<(count * page)).map { _ in UInt8.random(in: 0...255, using: &g) }
    }

    func written(_ mode: PageCompressionPolicy.Mode, _ data: [UInt8], pages: UInt32) throws -> (MemoryByteStream, PageCompressionPolicy) {
        let stream = MemoryByteStream()
        let policy = PageCompressionPolicy(mode: mode)
        let writer = PageRecordWriter(sink: stream, compression: policy)
        try data.withUnsafeBytes { try writer.write(.pages, nsPID: 5, vaddr: 0x10000, pageCount: pages, round: 1, payload: $0) }
        return (stream, policy)
    }

    func stream(_ bytes: [UInt8]) throws -> MemoryByteStream {
        let s = MemoryByteStream()
        try bytes.withUnsafeBytes { try s.write($0) }
        return s
    }

    /// A compressed record with any frame, its checksum right (so the frame is what's tested).
    func compressedRecord(pages: UInt32, frame: [UInt8], length: UInt32? = nil) -> [UInt8] {
        let h = PageRecord.header(rawKind: PageRecord.zstdPagesKind, nsPID: 5, vaddr: 0x10000, pageCount: pages, round: 1)
        var len = (length ?? UInt32(frame.count)).littleEndian
        let lenBytes = withUnsafeBytes(of: &len) { Array($0) }
        let sum = h.withUnsafeBytes { hb in lenBytes.withUnsafeBytes { lb in frame.withUnsafeBytes { PageHash.xxh3([hb, lb, $0]) } } }
        return h + lenBytes + frame + withUnsafeBytes(of: sum.littleEndian) { Array($0) }
    }

    func frame(_ data: [UInt8]) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: data.count + 1024)
        let n = try #require(data.withUnsafeBytes { d in out.withUnsafeMutableBytes { try! Zstd.Compressor().compress(d, into: $0) } })
        return Array(out[0..<n])
    }

    @Test func compressiblePagesRoundTripAsPagesRecords() throws {
        let data = compressible(PageRecord.maxPages, seed: 7)
        let (s, policy) = try written(.on, data, pages: UInt32(PageRecord.maxPages))
        #expect(s.bytes.count < data.count / 10, "1 MiB of counting pages took \(s.bytes.count) bytes")
        let reader = PageRecordReader(source: s)
        let record = try #require(try reader.next())
        #expect(record == PageRecord(kind: .pages, nsPID: 5, vaddr: 0x10000, pageCount: UInt32(PageRecord.maxPages), round: 1, payload: data))
        #expect(reader.compressedRecords == 1 && reader.bytesRead == UInt64(s.bytes.count))
        #expect(try reader.next() == nil)
        #expect(policy.compressed.pages == PageRecord.maxPages && policy.compressed.raw == UInt64(data.count))
    }

    @Test func pagesThatDontShrinkGoRawAndOffNeverCompresses() throws {
        let noise = random(8)
        let (s, policy) = try written(.on, noise, pages: 8)
        #expect(s.bytes.count == PageRecord.headerSize + noise.count + PageRecord.trailerSize)
        #expect(policy.compressed.pages == 0)
        let (off, _) = try written(.off, compressible(8, seed: 1), pages: 8)
        #expect(off.bytes.count == PageRecord.headerSize + 8 * page + PageRecord.trailerSize)
        #expect(try PageRecordReader(source: s).next()?.payload == noise)
    }

    @Test func corruptOrTruncatedCompressedRecordsAreRefused() throws {
        let data = compressible(4, seed: 3)
        let (s, _) = try written(.on, data, pages: 4)
        let good = s.bytes
        // A flipped bit anywhere in header, length or frame: the checksum.
        for offset in [2, 20, PageRecord.headerSize + 1, good.count - 12] {
            var bad = good
            bad[offset] ^= 0x10
            #expect(throws: GodwitError.self) { _ = try PageRecordReader(source: stream(bad)).next() }
        }
        // Cut anywhere inside: an error, never a short record.
        for cut in [PageRecord.headerSize + 2, PageRecord.headerSize + 5, good.count - 1] {
            #expect(throws: GodwitError.self) { _ = try PageRecordReader(source: stream(Array(good[0..<cut]))).next() }
        }
        // A cut frame with a right checksum: zstd refuses it. (A frame damaged in place may
        // still decode, to other bytes of the same size: the record's checksum is what
        // catches the transport; a source can send any pages it likes anyway.)
        let f = try frame(data)
        #expect(throws: GodwitError.self) {
            _ = try PageRecordReader(source: stream(compressedRecord(pages: 4, frame: Array(f.dropLast(3))))).next()
        }
        for i in stride(from: 0, to: f.count, by: 3) {
            var damaged = f
            damaged[i] ^= 0xff
            let record = try? PageRecordReader(source: stream(compressedRecord(pages: 4, frame: damaged))).next()
            #expect(record == nil || record?.payload.count == 4 * page)
        }
        // Garbage that is no frame at all.
        #expect(throws: GodwitError.self) {
            _ = try PageRecordReader(source: stream(compressedRecord(pages: 1, frame: [1, 2, 3, 4, 5]))).next()
        }
    }

    @Test func framesMustExpandToExactlyTheRecordsPages() throws {
        // 2 pages' frame in a record that claims 3, and 3 pages' frame in one that claims 2.
        let two = try frame(compressible(2, seed: 1)), three = try frame(compressible(3, seed: 1))
        #expect(throws: GodwitError.self) { _ = try PageRecordReader(source: stream(compressedRecord(pages: 3, frame: two))).next() }
        #expect(throws: GodwitError.self) { _ = try PageRecordReader(source: stream(compressedRecord(pages: 2, frame: three))).next() }
        #expect(try PageRecordReader(source: stream(compressedRecord(pages: 3, frame: three))).next()?.payload == compressible(3, seed: 1))
    }

    @Test func oversizedCountsAndLengthsAreRefusedBeforeReading() throws {
        let f = try frame(compressible(1, seed: 1))
        // More pages than a record may carry; no pages; a frame not smaller than its pages;
        // an empty frame; a length far past the stream (must not be allocated or read).
        for (pages, length) in [(UInt32(PageRecord.maxPages + 1), UInt32(f.count)), (0, UInt32(f.count)),
                                (1, UInt32(page)), (1, 0), (1, UInt32.max)] {
            let bytes = compressedRecord(pages: pages, frame: f, length: length)
            #expect(throws: GodwitError.self, "pages \(pages), length \(length)") { _ = try PageRecordReader(source: stream(bytes)).next() }
        }
    }

    /// Feeds the policy `count` chunks of 1 MiB: compressing takes 2 ms and leaves `ratio`,
    /// a raw write takes `rawMillis`. Returns how many were compressed.
    func run(_ policy: PageCompressionPolicy, chunks count: Int, ratio: Double?, rawMillis: Double) -> Int {
        var compressed = 0
        for _ in 0..<count {
            if policy.shouldCompress() {
                policy.noteAttempt(raw: 1 << 20, compressed: ratio.map { Int(Double(1 << 20) * $0) }, nanos: 2_000_000)
                if let ratio {
                    policy.noteSent(pages: 256, raw: 1 << 20, wire: Int(Double(1 << 20) * ratio))
                    compressed += 1
                    continue
                }
            }
            policy.noteRawWrite(bytes: 1 << 20, nanos: UInt64(rawMillis * 1e6))
        }
        return compressed
    }

    @Test func autoCompressesOnlyWhileTheLinkIsTheBottleneck() {
        // zstd at 500 MB/s shrinking to 10 %: worth it below 450 MB/s of link.
        let slow = run(PageCompressionPolicy(mode: .auto), chunks: 320, ratio: 0.1, rawMillis: 80)  // 13 MB/s
        #expect(slow > 280, "\(slow) of 320 compressed on a slow link")
        let fast = run(PageCompressionPolicy(mode: .auto), chunks: 320, ratio: 0.1, rawMillis: 0.5)  // 2 GB/s
        #expect(fast < 20, "\(fast) of 320 compressed on a fast link")
        // Pages that don't shrink: never sent compressed, whatever the link.
        #expect(run(PageCompressionPolicy(mode: .auto), chunks: 320, ratio: nil, rawMillis: 80) == 0)
        // The first raw write after compressed ones (buffers, the cap's burst) is not a measurement.
        let policy = PageCompressionPolicy(mode: .auto)
        _ = run(policy, chunks: 40, ratio: 0.1, rawMillis: 80)
        policy.noteSent(pages: 256, raw: 1 << 20, wire: 100_000)
        policy.noteRawWrite(bytes: 1 << 20, nanos: 10_000)
        #expect((policy.estimates.link ?? 0) < 20e6)
        #expect(PageCompressionPolicy(mode: .on).shouldCompress() && !PageCompressionPolicy(mode: .off).shouldCompress())
    }

    @Test func theCapHoldsTheRate() throws {
        let limiter = RateLimiter(Bandwidth(bitsPerSecond: 80_000_000))  // 10 MB/s
        let sink = RateLimitedSink(MemoryByteStream(), limiter: limiter)
        let data = [UInt8](repeating: 1, count: 3 << 20)
        let t0 = DispatchTime.now().uptimeNanoseconds
        try data.withUnsafeBytes { try sink.write($0) }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        // 3 MiB at 10 MB/s: 0.31 s, less the 100 KB burst.
        #expect(seconds > 0.28 && seconds < 1.5, "\(seconds) s")
        #expect(limiter.waitedNanos > 250_000_000)
    }

    @Test func bandwidthIsParsedStrictlyEverywhere() throws {
        #expect(try MigrationBandwidth.parse("100mbit") == Bandwidth(bitsPerSecond: 100_000_000))
        #expect(try MigrationBandwidth.parse("50mbps") == Bandwidth(bitsPerSecond: 400_000_000))
        #expect(try MigrationBandwidth.parse("unlimited") == nil)
        for bad in ["", "100", "fast", "100 mbit/s", "1e400mbit", "nanmbit", "-5mbit", "500kbit", "200tbit"] {
            #expect(throws: GodwitError.self, "'\(bad)'") { _ = try MigrationBandwidth.parse(bad) }
            #expect(throws: (any Error).self, "'\(bad)'") { _ = try ConfigKey.validate("migration.bandwidth", bad) }
        }
        #expect(try ConfigKey.validate("migration.bandwidth", "1000mbit") == "1gbit")
        #expect(try ConfigKey.validate("migration.compression", "off") == "off")
        #expect(throws: GodwitError.self) { _ = try ConfigKey.validate("migration.compression", "zstd") }
        // The REST request refuses what the CLI refuses.
        let decoder = APICoding.decoder()
        let ok = try decoder.decode(MoveRequest.self, from: Data(#"{"target":"h2","bandwidth":"100mbit"}"#.utf8))
        #expect(ok.bandwidth == .limited(Bandwidth(bitsPerSecond: 100_000_000)))
        #expect(try decoder.decode(MoveRequest.self, from: Data(#"{"target":"h2","bandwidth":"unlimited"}"#.utf8)).bandwidth == .unlimited)
        for bad in [#""1e999bit""#, #""12""#, "12", "[]"] {
            #expect(throws: (any Error).self) { _ = try decoder.decode(MoveRequest.self, from: Data("{\"target\":\"h2\",\"bandwidth\":\(bad)}".utf8)) }
        }
        // An older destination announces nothing: no compressed records for it.
        let old = try decoder.decode(PeerCapabilities.self, from: Data(#"{"host":"old","strategies":[]}"#.utf8))
        #expect(old.pageRecordFeatures == nil)
        let link = MoveLink(request: nil, config: ContainerConfig(["migration.bandwidth": "200mbit"]), destination: old)
        #expect(link.compression == nil && link.compressionText.contains("can't read"))
        #expect(link.limiter?.bytesPerSecond == 25_000_000 && link.limitSource == "migration.bandwidth")
        let flag = MoveLink(request: .limited(Bandwidth(bitsPerSecond: 100_000_000)), config: ContainerConfig(["migration.bandwidth": "200mbit"]),
                            destination: PeerCapabilities(host: "new", criuVersion: nil, strategies: []))
        #expect(flag.limiter?.bytesPerSecond == 12_500_000 && flag.limitSource == "--bandwidth" && flag.compression?.mode == .auto)
        #expect(MoveLink(request: .unlimited, config: ContainerConfig(["migration.bandwidth": "200mbit"]), destination: old).limiter == nil)
    }
}
