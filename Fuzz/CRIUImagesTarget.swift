import Foundation
import GodwitCore

// Target criu-images: CRIU image files as the destination reads them from the source
// (Sources/Checkpoint compiled in): any image through ImageFile and ProtobufMessage (as
// the stats and inventory images are), a pagemap through PagemapImage, and a directory of
// pagemap + pages images through ImageRebuilder, as a copy restore rebuilds a lazy dump.
//
// Input: [u16 pagemap length][pagemap image][pages image].

let directory = "/dev/shm/godwit-fuzz-images-\(getpid())"
let pageSize = PageServerHeader.pageSize

/// Walks nested messages the way CRIU's own readers would (bounded depth).
func walk(_ data: Data, depth: Int) {
    guard depth < 4, let message = try? ProtobufMessage(data) else { return }
    for nested in message.messages.values { walk(nested, depth: depth + 1) }
}

func fuzzOne(_ bytes: [UInt8]) {
    var input = FuzzBytes(bytes)
    let mapLength = Int(input.integer(UInt16.self))
    let map = Data(input.take(mapLength))
    let pages = Data(input.rest)

    for part in [map, pages] {
        guard let image = try? ImageFile(data: part) else { continue }
        for entry in image.entries.prefix(64) {
            walk(entry, depth: 0)
            var stats = CRIUStats()
            try? stats.merge(statsEntry: entry)
        }
    }

    guard let pagemap = try? PagemapImage(data: map) else { return }
    var total: UInt64 = 0
    for entry in pagemap.entries {
        fuzzCheck(entry.pages >= 0 && UInt64(entry.vaddr) % UInt64(pageSize) == 0, "entry \(entry)")
        let end = entry.vaddr.addingReportingOverflow(UInt64(entry.pages) * UInt64(pageSize))
        fuzzCheck(!end.overflow, "entry \(entry) wraps")
        total += UInt64(entry.pages)
    }
    fuzzCheck(total <= HostMemory.pages, "\(total) pages")
    // What it decoded, it encodes back to the same entries.
    let again = try? PagemapImage(data: pagemap.encoded())
    fuzzCheck(again?.entries == pagemap.entries && again?.pagesID == pagemap.pagesID, "re-encoding changed \(pagemap)")

    // The rebuild, with a provider that (like the page store) has a few pages only.
    try? FileManager.default.removeItem(atPath: directory)
    try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    _ = FileManager.default.createFile(atPath: directory + "/pagemap-1.img", contents: map)
    _ = FileManager.default.createFile(atPath: directory + "/pages-\(pagemap.pagesID).img", contents: pages)
    let rebuilder = ImageRebuilder(directory: directory)
    _ = try? rebuilder.lazyEntries()
    var provided = 0
    let stats = try? rebuilder.rebuild { _, vaddr, count, buffer in
        provided += count
        guard provided <= 64 else { throw GodwitError("no such page 0x\(String(vaddr, radix: 16))") }
        fuzzCheck(buffer.count == count * pageSize, "provider buffer of \(buffer.count) for \(count) pages")
        memset(buffer.baseAddress!, 0x5A, buffer.count)
    }
    if let stats {
        fuzzCheck(stats.bytesWritten == UInt64(stats.presentPages + stats.lazyPages) * UInt64(pageSize), "\(stats)")
        fuzzCheck(stats.presentPages * pageSize <= pages.count, "\(stats.presentPages) present pages from \(pages.count) bytes")
    }
}

func fuzzSeeds() -> [String: [UInt8]] {
    let magic: [UInt8] = [0x19, 0x43, 0x56, 0x54, 0x7b, 0x0c, 0x31, 0x56]
    func seed(_ image: PagemapImage, pages: Int) -> [UInt8] {
        let map = [UInt8](image.encoded())
        return littleEndian(UInt16(map.count)) + map + [UInt8](repeating: 0xC3, count: pages * pageSize)
    }
    let plain = PagemapImage(magic: magic, pagesID: 1, entries: [
        PagemapEntry(vaddr: 0x40_0000, pages: 2, flags: .present),
        PagemapEntry(vaddr: 0x60_0000, pages: 1, flags: .present),
    ])
    let lazy = PagemapImage(magic: magic, pagesID: 3, entries: [
        PagemapEntry(vaddr: 0x40_0000, pages: 1, flags: .present),
        PagemapEntry(vaddr: 0x7f00_0000_0000, pages: 4, flags: .lazy),
    ])
    let top = PagemapImage(magic: magic, pagesID: 2, entries: [
        PagemapEntry(vaddr: UInt64.max - 2 * UInt64(pageSize) + 1, pages: 1, flags: .lazy),
    ])
    // A stats-dump: service magic, then stats_entry { dump { freezing_time = 1; pages_written = 7 } }.
    let dump: [UInt8] = [0x08, 0x01, 0x38, 0x07]
    let statsEntry: [UInt8] = [0x0a, UInt8(dump.count)] + dump
    let stats = littleEndian(UInt16(0)) + littleEndian(UInt32(0x5510_5940)) + littleEndian(UInt32(0x5735_5713))
        + littleEndian(UInt32(statsEntry.count)) + statsEntry
    return ["plain": seed(plain, pages: 3), "lazy": seed(lazy, pages: 1), "top": seed(top, pages: 0), "stats": stats]
}
