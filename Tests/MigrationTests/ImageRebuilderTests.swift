import Checkpoint
import Foundation
import GodwitCore
import Testing

/// Rebuilding a lazy dump's images into ordinary ones, on synthetic images.
@Suite struct ImageRebuilderTests {
    @Test func lazyEntriesBecomePresentWithTheirDataInPagemapOrder() throws {
        let dir = NSTemporaryDirectory() + "godwit-rebuild-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let page = 4096
        // IMG_COMMON_MAGIC, PAGEMAP_MAGIC as CRIU writes them.
        let magic: [UInt8] = [0x19, 0x43, 0x56, 0x54, 0x25, 0x40, 0x08, 0x56]
        let image = PagemapImage(magic: magic, pagesID: 3, entries: [
            PagemapEntry(vaddr: 0x400000, pages: 2, flags: .present),
            PagemapEntry(vaddr: 0x7f0000000000, pages: 3, flags: .lazy),
            PagemapEntry(vaddr: 0x7ffff000, pages: 1, flags: .present),
        ])
        _ = FileManager.default.createFile(atPath: dir + "/pagemap-2.img", contents: image.encoded())
        // The dump's own data: the three present pages, filled with 1, 2, 3.
        let dumped = (1...3).flatMap { [UInt8](repeating: UInt8($0), count: page) }
        _ = FileManager.default.createFile(atPath: dir + "/pages-3.img", contents: Data(dumped))
        #expect(try PagemapImage(path: dir + "/pagemap-2.img") == image, "encode/decode round trip")

        // Space allocated ahead (bigger than needed): used, then cut to size.
        try ImageRebuilder.prepareStaging(directory: dir, id: 2, bytes: 64 * UInt64(page))
        let rebuilder = ImageRebuilder(directory: dir)
        let lazy = try rebuilder.lazyEntries()
        #expect(lazy.count == 1 && lazy[0].id == 2 && lazy[0].entries.map(\.pages) == [3])
        var asked: [(Int32, UInt64, Int)] = []
        let stats = try rebuilder.rebuild { id, vaddr, pages, buffer in
            asked.append((id, vaddr, pages))
            for i in 0..<pages {
                let value = UInt8(0x40 + (vaddr - 0x7f0000000000) / 4096 + UInt64(i))
                memset(buffer.baseAddress! + i * page, Int32(value), page)
            }
        }
        #expect(asked.count == 1 && asked[0].0 == 2 && asked[0].1 == 0x7f0000000000 && asked[0].2 == 3)
        #expect(stats.lazyPages == 3 && stats.presentPages == 3 && stats.processes == 1)
        let rebuilt = try PagemapImage(path: dir + "/pagemap-2.img")
        #expect(rebuilt.entries.allSatisfy { $0.flags == .present } && rebuilt.magic == magic && rebuilt.pagesID == 3)
        let data = try #require(FileManager.default.contents(atPath: dir + "/pages-3.img"))
        #expect(data.count == 6 * page && !FileManager.default.fileExists(atPath: dir + "/.staging-pages-2"))
        let firstBytes = stride(from: 0, to: data.count, by: page).map { data[$0] }
        #expect(firstBytes == [1, 2, 0x40, 0x41, 0x42, 3], "present, lazy, present in entry order")
    }
}
