import Foundation
import GodwitCore
import Testing
@testable import Checkpoint

/// CRIU images arrive from the source host: hostile or corrupt bytes must give errors,
/// never traps (each case here used to trap, or to read past what it was given).
@Suite struct ImageFileTests {
    static let page = UInt64(PageServerHeader.pageSize)
    static let magic: [UInt8] = [0x19, 0x43, 0x56, 0x54, 0x7b, 0x0c, 0x31, 0x56]

    /// An image file: magic, then (u32 size, bytes) per entry.
    static func image(_ entries: [[UInt8]]) -> Data {
        var out = Data(magic)
        for e in entries {
            withUnsafeBytes(of: UInt32(e.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(contentsOf: e)
        }
        return out
    }

    static func entry(vaddr: UInt64, pages: UInt64, flags: UInt64 = 4) -> [UInt8] {
        Protobuf.varintField(1, vaddr) + Protobuf.varintField(2, 0) + Protobuf.varintField(4, flags)
            + Protobuf.varintField(5, pages)
    }

    static func expectError(_ data: Data, _ words: String, sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            let image = try PagemapImage(data: data)
            Issue.record("accepted: \(image.entries)", sourceLocation: sourceLocation)
        } catch let error as GodwitError {
            #expect(error.description.contains(words), "\(error)", sourceLocation: sourceLocation)
        } catch {
            Issue.record("\(error)", sourceLocation: sourceLocation)
        }
    }

    @Test func aPagemapRoundTrips() throws {
        let original = PagemapImage(magic: Self.magic, pagesID: 7, entries: [
            PagemapEntry(vaddr: 0x40_0000, pages: 3, flags: .present),
            PagemapEntry(vaddr: 0x7f00_0000_0000, pages: 16, flags: [.lazy]),
        ])
        #expect(try PagemapImage(data: original.encoded()) == original)
        #expect(try PagemapImage(data: original.encoded()).totalPages == 19)
    }

    @Test func varintsThatDoNotFit64BitsAreRefused() throws {
        // Ten bytes whose last carries more than bit 63.
        let tooBig: [UInt8] = [0x08] + [UInt8](repeating: 0xff, count: 9) + [0x02]
        #expect(throws: GodwitError.self) { try ProtobufMessage(Data(tooBig)) }
        let endless: [UInt8] = [0x08] + [UInt8](repeating: 0x80, count: 12)
        #expect(throws: GodwitError.self) { try ProtobufMessage(Data(endless)) }
        // The largest value that fits still decodes.
        let max: [UInt8] = [0x08] + [UInt8](repeating: 0xff, count: 9) + [0x01]
        #expect(try ProtobufMessage(Data(max)).varints[1] == UInt64.max)
    }

    @Test func lengthsPastTheEndAreRefused() {
        // Field 1, wire type 2, length 2^64-1: Int(length) trapped.
        let huge: [UInt8] = [0x0a] + Protobuf.varint(UInt64.max) + [1, 2, 3]
        #expect(throws: GodwitError.self) { try ProtobufMessage(Data(huge)) }
        // Int.max: `i + length` overflowed.
        let intMax: [UInt8] = [0x0a] + Protobuf.varint(UInt64(Int.max)) + [1]
        #expect(throws: GodwitError.self) { try ProtobufMessage(Data(intMax)) }
        // Fixed 64- and 32-bit fields cut short.
        #expect(throws: GodwitError.self) { try ProtobufMessage(Data([0x09, 1, 2, 3])) }
        #expect(throws: GodwitError.self) { try ProtobufMessage(Data([0x0d, 1, 2])) }
        // An image entry longer than the file.
        var truncated = Data(Self.magic)
        truncated.append(contentsOf: [0xff, 0xff, 0xff, 0xff, 0x08, 0x01])
        #expect(throws: GodwitError.self) { try ImageFile(data: truncated) }
    }

    @Test func pagemapFieldsAreRangeChecked() {
        let head = Protobuf.varintField(1, 1)
        Self.expectError(Self.image([Protobuf.varintField(1, 1 << 32)]), "pages_id 4294967296 is not a u32")
        Self.expectError(Self.image([head, Self.entry(vaddr: 0x1000, pages: 1, flags: 1 << 32)]), "flags 4294967296 are not a u32")
        // Int(nr_pages) trapped for 2^63.
        Self.expectError(Self.image([head, Self.entry(vaddr: 0x1000, pages: 1 << 63)]), "run past the end of the address space")
        // vaddr + pages * 4096 wrapped.
        Self.expectError(Self.image([head, Self.entry(vaddr: UInt64.max - Self.page + 1, pages: 1)]), "run past the end")
        Self.expectError(Self.image([head, Self.entry(vaddr: 0x1001, pages: 1)]), "not page aligned")
        // More pages than this host could ever restore: nothing is sized from the count.
        Self.expectError(Self.image([head, Self.entry(vaddr: 0, pages: HostMemory.pages + 1)]), "more than this host's memory")
        Self.expectError(Self.image([head, Self.entry(vaddr: 0, pages: HostMemory.pages),
                                     Self.entry(vaddr: 0, pages: 1)]), "more than this host's memory")
        Self.expectError(Data([1, 2, 3]), "too short")
        // Found by the fuzzer: without the common magic, the entries were read from another
        // offset than the one the rebuilt image is written with.
        var noMagic = Self.image([head, Self.entry(vaddr: 0x1000, pages: 1)])
        noMagic.replaceSubrange(0..<4, with: Array("ring".utf8))
        Self.expectError(noMagic, "not a CRIU pagemap image (magic 0x676e6972)")
    }

    @Test func theLastPageOfTheAddressSpaceIsFine() throws {
        let last = UInt64.max - 2 * Self.page + 1  // the last aligned page whose end still fits
        let data = Self.image([Protobuf.varintField(1, 1), Self.entry(vaddr: last, pages: 1)])
        #expect(try PagemapImage(data: data).entries == [PagemapEntry(vaddr: last, pages: 1, flags: .present)])
    }

    @Test func aDirectoryNamingMoreThanThisHostHoldsIsRefused() throws {
        let dir = NSTemporaryDirectory() + "godwit-images-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let half = HostMemory.pages / 2 + 1
        for id in 1...2 {
            let image = Self.image([Protobuf.varintField(1, UInt64(id)), Self.entry(vaddr: 0, pages: half, flags: 2)])
            try image.write(to: URL(fileURLWithPath: dir + "/pagemap-\(id).img"))
        }
        #expect(throws: GodwitError.self) { try ImageRebuilder(directory: dir).lazyEntries() }
        #expect(throws: GodwitError.self) { try ImageRebuilder(directory: dir).rebuild { _, _, _, _ in } }
    }
}
