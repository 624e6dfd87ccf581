import Foundation
import Testing
@testable import Checkpoint

@Suite struct PageServerHeaderTests {
    let page = UInt64(PageServerHeader.pageSize)

    /// Little-endian bytes of the five fields, written independently of the codec.
    static func wire(cmd: UInt32, padding: [UInt8] = [0, 0, 0, 0], pages: UInt64, vaddr: UInt64, dst: UInt64) -> [UInt8] {
        func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }
        return le(cmd) + padding + le(pages) + le(vaddr) + le(dst)
    }

    @Test func getRoundTripsWithCRIUsLayout() throws {
        let get = try PageServerHeader.get(nsPID: 17, vaddr: 0x7f00_0000_1000, pages: 16)
        let bytes = get.encode()
        #expect(bytes == Self.wire(cmd: 7, pages: 16, vaddr: 0x7f00_0000_1000, dst: 17))
        let decoded = try PageServerHeader(bytes: bytes)
        #expect(decoded == get)
        #expect(decoded.isGet && !decoded.isClose && !decoded.isPresentPages)
        #expect(decoded.command == PageServerHeader.Command.get && decoded.flags == 0)
        #expect(decoded.nsPID == 17 && decoded.pages == 16 && decoded.vaddr == 0x7f00_0000_1000)
        #expect(decoded.byteCount == 16 * PageServerHeader.pageSize)
        #expect(decoded.endAddress == 0x7f00_0000_1000 + 16 * page)
    }

    /// CRIU answers with the request struct itself: whatever was in the padding comes back.
    @Test func replyEchoesThePaddingAsAddFPresent() throws {
        let padding: [UInt8] = [0xDE, 0xC0, 0xAD, 0x0B]
        let request = try PageServerHeader(bytes: Self.wire(cmd: 7, padding: padding, pages: 8, vaddr: 0x40_0000, dst: 3))
        let reply = try request.reply(pages: 5)
        let bytes = reply.encode()
        #expect(bytes == Self.wire(cmd: 0x0004_0006, padding: padding, pages: 5, vaddr: 0x40_0000, dst: 3))
        #expect(reply.isPresentPages && reply.command == PageServerHeader.Command.addF)
        #expect(reply.flags == PageServerHeader.Flag.present)
        #expect(reply.padding == request.padding)
        let forwarded = try request.asGet(pages: 32, vaddr: 0x41_0000)
        #expect(Array(forwarded.encode()[4..<8]) == padding && forwarded.isGet && forwarded.dstID == 3)
    }

    @Test func closeAndAbortAreBareCommands() throws {
        #expect(PageServerHeader.closeRequest.encode() == Self.wire(cmd: 0x1023, pages: 0, vaddr: 0, dst: 0))
        #expect(PageServerHeader.abortRequest.encode() == Self.wire(cmd: 0xDEAD, pages: 0, vaddr: 0, dst: 0))
        #expect(try PageServerHeader(bytes: Self.wire(cmd: 0x1023, pages: 0, vaddr: 0, dst: 0)).isClose)
        // CRIU leaves its session loop only on the exact word; with flags it is not CLOSE.
        #expect(try !PageServerHeader(bytes: Self.wire(cmd: 0x0001_1023, pages: 0, vaddr: 0, dst: 0)).isClose)
    }

    @Test func shortBufferIsAnError() throws {
        let full = Self.wire(cmd: 7, pages: 1, vaddr: 0x1000, dst: 1)
        for count in [0, 1, 24, 31] {
            #expect(throws: (any Error).self) { try PageServerHeader(bytes: Array(full.prefix(count))) }
        }
        var small = [UInt8](repeating: 0, count: 31)
        #expect(throws: (any Error).self) {
            try small.withUnsafeMutableBytes { try PageServerHeader.closeRequest.write(into: $0) }
        }
        // Longer buffers: the header is the first 32 bytes.
        #expect(try PageServerHeader(bytes: full + [9, 9, 9]).vaddr == 0x1000)
    }

    @Test func pageCountsThatOverflowOrExceedTheLimitAreRejected() throws {
        let max = UInt64(PageServerHeader.maxPages)
        #expect(try PageServerHeader(bytes: Self.wire(cmd: 7, pages: max, vaddr: 0x1000, dst: 1)).pages == PageServerHeader.maxPages)
        for pages in [max + 1, UInt64(Int.max), UInt64(Int.max) + 1, UInt64.max] {
            #expect(throws: (any Error).self) { try PageServerHeader(bytes: Self.wire(cmd: 7, pages: pages, vaddr: 0, dst: 1)) }
        }
        // vaddr + pages * PAGE_SIZE must not wrap around (ending exactly at 2^64 wraps too).
        let top = UInt64.max - page + 1
        #expect(throws: (any Error).self) { try PageServerHeader(bytes: Self.wire(cmd: 7, pages: 1, vaddr: top, dst: 1)) }
        #expect(throws: (any Error).self) { try PageServerHeader(bytes: Self.wire(cmd: 7, pages: 2, vaddr: top - page, dst: 1)) }
        #expect(try PageServerHeader(bytes: Self.wire(cmd: 7, pages: 1, vaddr: top - page, dst: 1)).endAddress == top)
        // Built headers are held to the same rules.
        #expect(throws: (any Error).self) { try PageServerHeader.get(nsPID: 1, vaddr: 0, pages: -1) }
        #expect(throws: (any Error).self) { try PageServerHeader.get(nsPID: 1, vaddr: 0, pages: PageServerHeader.maxPages + 1) }
        #expect(throws: (any Error).self) { try PageServerHeader.get(nsPID: 1, vaddr: top, pages: 1) }
        let request = try PageServerHeader.get(nsPID: 1, vaddr: top - page, pages: 1)
        #expect(throws: (any Error).self) { try request.reply(pages: 2) }
    }

    @Test func dstIDBeyondAPidHasNoNsPID() throws {
        #expect(try PageServerHeader(bytes: Self.wire(cmd: 7, pages: 1, vaddr: 0, dst: UInt64(Int32.max) + 1)).nsPID == nil)
        #expect(try PageServerHeader(bytes: Self.wire(cmd: 7, pages: 1, vaddr: 0, dst: UInt64.max)).nsPID == nil)
        #expect(try PageServerHeader(bytes: Self.wire(cmd: 7, pages: 1, vaddr: 0, dst: UInt64(Int32.max))).nsPID == Int32.max)
    }

    /// 10,000 random buffers: decoding never traps; what decodes re-encodes to the same
    /// bytes and keeps the promised bounds. Half have small page counts so that most of
    /// those decode and the accessors get exercised too.
    @Test func randomBuffersNeverTrap() {
        var rng = SplitMix64(seed: 0x6061_7769_7400_0012)
        var decoded = 0
        for i in 0..<10_000 {
            var bytes = (0..<PageServerHeader.size).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if i % 2 == 0 {
                bytes.replaceSubrange(8..<16, with: withUnsafeBytes(of: (rng.next() % 2048).littleEndian) { Array($0) })
            }
            guard let header = try? PageServerHeader(bytes: bytes) else { continue }
            decoded += 1
            #expect(header.encode() == bytes)
            #expect(header.pages >= 0 && header.pages <= PageServerHeader.maxPages)
            #expect(header.endAddress >= header.vaddr)
            _ = (header.command, header.flags, header.nsPID, header.isGet, header.isClose, header.isPresentPages)
            _ = try? header.reply(pages: header.pages)
            _ = try? header.asGet(pages: header.pages)
        }
        #expect(decoded > 1000, "the generator should produce decodable headers too")
    }
}

/// A small deterministic generator: a failing buffer can be reproduced from the seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
