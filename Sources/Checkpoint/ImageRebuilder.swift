import Foundation
import GodwitCore

/// pagemap_entry.flags (criu/include/pagemap.h).
public struct PagemapFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// The pages are in the parent image directory (incremental dumps).
    public static let parent = PagemapFlags(rawValue: 1 << 0)
    /// May be restored lazily (served by a page server).
    public static let lazy = PagemapFlags(rawValue: 1 << 1)
    /// The pages' contents are in this directory's pages-<id>.img, in pagemap order.
    public static let present = PagemapFlags(rawValue: 1 << 2)
}

public struct PagemapEntry: Sendable, Equatable {
    public var vaddr: UInt64
    public var pages: Int
    public var flags: PagemapFlags
    public init(vaddr: UInt64, pages: Int, flags: PagemapFlags) { self.vaddr = vaddr; self.pages = pages; self.flags = flags }
}

/// pagemap-<id>.img: the image magics, a pagemap_head { pages_id = 1 }, then one
/// pagemap_entry { vaddr = 1; compat_nr_pages = 2; in_parent = 3; flags = 4; nr_pages = 5 }
/// per run of pages (CRIU 3.16+ writes the count as u64 field 5 and 0 in the old field 2).
/// pages-<pages_id>.img holds the contents of the PE_PRESENT entries back to back, in
/// entry order, with no header (criu/page-xfer.c write_pagemap_loc + page-read.c).
public struct PagemapImage: Sendable, Equatable {
    /// The first 8 bytes of the file (common magic + PAGEMAP magic), written back as is.
    public var magic: [UInt8]
    public var pagesID: UInt32
    public var entries: [PagemapEntry]

    public init(magic: [UInt8], pagesID: UInt32, entries: [PagemapEntry]) {
        self.magic = magic
        self.pagesID = pagesID
        self.entries = entries
    }

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GodwitError("cannot read CRIU pagemap image \(path)")
        }
        try self.init(data: data, name: path)
    }

    /// The images come from the source host: every field is range-checked, so that what the
    /// rebuild and the page proxy compute from an entry (`vaddr + pages * page size`) can't
    /// overflow, and an entry can't name more pages than this host could ever hold.
    public init(data: Data, name: String = "pagemap image") throws {
        guard data.count >= 8 else { throw GodwitError("CRIU pagemap image \(name) is too short (\(data.count) bytes)") }
        // `encoded()` writes the 8 magic bytes back as they came: only with the common magic
        // first does ImageFile skip both, so that what is written back reads the same.
        let first = data.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) }
        guard first == ImageFile.commonMagic else {
            throw GodwitError("\(name) is not a CRIU pagemap image (magic 0x\(String(first, radix: 16)))",
                              hint: "the images are corrupt, or were not written by CRIU 4.2")
        }
        let image = try ImageFile(data: data, name: name)
        guard let head = image.entries.first else { throw GodwitError("CRIU pagemap image \(name) has no head") }
        magic = [UInt8](data.prefix(8))
        let rawID = try ProtobufMessage(head).varints[1] ?? 0
        guard let id = UInt32(exactly: rawID) else { throw GodwitError("CRIU pagemap image \(name): pages_id \(rawID) is not a u32") }
        pagesID = id
        let pageSize = UInt64(PageServerHeader.pageSize)
        var total: UInt64 = 0
        entries = try image.entries.dropFirst().enumerated().map { index, raw in
            func bad(_ why: String) -> GodwitError {
                GodwitError("CRIU pagemap image \(name), entry \(index + 1): \(why)",
                            hint: "the images are corrupt, or were not written by CRIU 4.2")
            }
            let m = try ProtobufMessage(raw)
            let vaddr = m.varints[1] ?? 0
            let count = m.varints[5] ?? m.varints[2] ?? 0
            guard let rawFlags = UInt32(exactly: m.varints[4] ?? 0) else { throw bad("flags \(m.varints[4] ?? 0) are not a u32") }
            var flags = PagemapFlags(rawValue: rawFlags)
            // Images from before the flags field: in_parent=true meant PE_PARENT, else present.
            if m.varints[4] == nil { flags = (m.varints[3] ?? 0) != 0 ? .parent : .present }
            guard PageArithmetic.isAligned(vaddr, pageSize: pageSize) else {
                throw bad("address 0x\(String(vaddr, radix: 16)) is not page aligned")
            }
            guard PageArithmetic.end(of: vaddr, pages: count, pageSize: pageSize) != nil else {
                throw bad("\(count) pages at 0x\(String(vaddr, radix: 16)) run past the end of the address space")
            }
            total += count  // cannot wrap: each count is below 2^52 (checked above)
            guard total <= HostMemory.pages else {
                throw bad("\(total) pages in all, more than this host's memory and swap hold (\(HostMemory.pages) pages)")
            }
            return PagemapEntry(vaddr: vaddr, pages: Int(count), flags: flags)
        }
    }

    /// Pages named by all entries (each image is bounded by `HostMemory.pages`).
    public var totalPages: Int { entries.reduce(0) { $0 + $1.pages } }

    public func encoded() -> Data {
        var out = Data(magic)
        func entry(_ body: [UInt8]) {
            withUnsafeBytes(of: UInt32(body.count).littleEndian) { out.append(contentsOf: $0) }
            out.append(contentsOf: body)
        }
        entry(Protobuf.varintField(1, UInt64(pagesID)))
        for e in entries {
            entry(Protobuf.varintField(1, e.vaddr) + Protobuf.varintField(2, 0)
                  + Protobuf.varintField(4, UInt64(e.flags.rawValue)) + Protobuf.varintField(5, UInt64(e.pages)))
        }
        return out
    }

    /// pagemap-<id>.img files of an images directory, by id (the pid inside the
    /// container's pid namespace). pagemap-shmem-*.img are not per-process and stay as they are.
    public static func list(directory: String) throws -> [(id: Int32, path: String)] {
        try FileManager.default.contentsOfDirectory(atPath: directory).compactMap { name in
            guard name.hasPrefix("pagemap-"), name.hasSuffix(".img"),
                  let id = Int32(name.dropFirst("pagemap-".count).dropLast(".img".count)) else { return nil }
            return (id, directory + "/" + name)
        }.sorted { $0.id < $1.id }
    }
}

enum Protobuf {
    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value, out: [UInt8] = []
        repeat {
            var b = UInt8(v & 0x7f)
            v >>= 7
            if v != 0 { b |= 0x80 }
            out.append(b)
        } while v != 0
        return out
    }

    static func varintField(_ number: Int, _ value: UInt64) -> [UInt8] {
        varint(UInt64(number << 3)) + varint(value)
    }
}

/// Turns a LAZY dump's images into ordinary ones: every lazy pagemap entry becomes
/// PE_PRESENT and its contents are written into pages-<id>.img at its place in entry order,
/// next to the data the dump already wrote for its non-lazy entries. The contents of lazy
/// pages come from `provider` (the destination's page store, or the source's page server
/// for what the store lacks). The result restores with a plain, non-lazy `criu restore`.
public struct ImageRebuilder {
    public struct Stats: Sendable, Equatable {
        public var processes = 0
        public var lazyPages = 0
        public var presentPages = 0
        public var bytesWritten: UInt64 = 0
    }

    /// Fills `buffer` with `pages` pages of process `id` starting at `vaddr`.
    public typealias Provider = (_ id: Int32, _ vaddr: UInt64, _ pages: Int, _ buffer: UnsafeMutableRawBufferPointer) throws -> Void

    public let directory: String
    public init(directory: String) { self.directory = directory }

    /// The lazy entries, per process: what the destination must supply.
    public func lazyEntries() throws -> [(id: Int32, entries: [PagemapEntry])] {
        var total = 0
        return try PagemapImage.list(directory: directory).map { item in
            let image = try PagemapImage(path: item.path)
            total += image.totalPages
            try Self.checkTotal(total)
            return (item.id, image.entries.filter { $0.flags.contains(.lazy) && !$0.flags.contains(.present) })
        }
    }

    /// Each image is bounded on its own; a directory of many must be too, before the
    /// restore fetches (or the rebuild writes) what they name.
    static func checkTotal(_ pages: Int) throws {
        guard UInt64(pages) <= HostMemory.pages else {
            throw GodwitError("the CRIU images name \(pages) pages, more than this host's memory and swap hold (\(HostMemory.pages) pages)",
                              hint: "the images are corrupt, or the container does not fit this host")
        }
    }

    public func rebuild(provider: Provider) throws -> Stats {
        var stats = Stats()
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let chunkPages = 256
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkPages * pageSize, alignment: 4096)
        defer { buffer.deallocate() }
        // All images are read (and their total checked) before anything is written.
        var total = 0
        let images = try PagemapImage.list(directory: directory).map { item in
            let image = try PagemapImage(path: item.path)
            total += image.totalPages
            try Self.checkTotal(total)
            return (id: item.id, path: item.path, image: image)
        }
        for item in images {
            var image = item.image
            let bytesBefore = stats.bytesWritten
            let pagesPath = directory + "/pages-\(image.pagesID).img"
            let newPath = pagesPath + ".rebuilt"
            let input = open(pagesPath, O_RDONLY | O_CLOEXEC)  // may be absent when everything was lazy
            defer { if input >= 0 { close(input) } }
            // A staging file allocated before the freeze saves allocating fresh tmpfs pages
            // now, inside the frozen window (3x faster for 256 MiB here).
            let staging = Self.stagingPath(directory: directory, id: item.id)
            let staged = rename(staging, newPath) == 0
            let output = open(newPath, O_WRONLY | O_CREAT | (staged ? 0 : O_TRUNC) | O_CLOEXEC, 0o600)
            guard output >= 0 else { throw GodwitError.errno("create \(newPath)") }
            defer { close(output) }
            var inOffset: off_t = 0
            for (index, entry) in image.entries.enumerated() {
                if entry.flags.contains(.parent) {
                    throw GodwitError("pagemap \(item.path) refers to a parent image (PE_PARENT)",
                                      hint: "rebuild works on a single, non-incremental lazy dump")
                }
                let fromDump = entry.flags.contains(.present)
                guard fromDump || entry.flags.contains(.lazy) else { continue }
                var done = 0
                while done < entry.pages {
                    let n = min(chunkPages, entry.pages - done)
                    let bytes = n * pageSize
                    let slice = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes])
                    if fromDump {
                        guard input >= 0 else { throw GodwitError("\(pagesPath) is missing but \(item.path) has present pages") }
                        try Self.full(pread, input, slice, inOffset, what: "reading \(pagesPath)")
                        inOffset += off_t(bytes)
                    } else {
                        try provider(item.id, entry.vaddr + UInt64(done * pageSize), n, slice)
                    }
                    try Self.full({ fd, p, c, o in pwrite(fd, p, c, o) }, output, slice, off_t(-1), what: "writing \(newPath)")
                    stats.bytesWritten += UInt64(bytes)
                    done += n
                }
                if fromDump { stats.presentPages += entry.pages } else { stats.lazyPages += entry.pages }
                image.entries[index].flags = .present
            }
            if staged { _ = ftruncate(output, off_t(stats.bytesWritten - bytesBefore)) }
            // Both files are replaced only once both are complete.
            let mapPath = item.path + ".rebuilt"
            guard FileManager.default.createFile(atPath: mapPath, contents: image.encoded(),
                                                 attributes: [.posixPermissions: Int(OwnerOnly.fileMode)]) else {
                throw GodwitError("cannot write \(mapPath)")
            }
            guard rename(newPath, pagesPath) == 0, rename(mapPath, item.path) == 0 else {
                throw GodwitError.errno("replacing \(item.path)")
            }
            stats.processes += 1
        }
        return stats
    }

    static func stagingPath(directory: String, id: Int32) -> String { directory + "/.staging-pages-\(id)" }

    /// Allocates, ahead of time, the space the rebuilt pages image of process `id` will
    /// need (an estimate: the destination's page count for it plus some slack). Unused
    /// staging files are removed by `removeStaging`.
    public static func prepareStaging(directory: String, id: Int32, bytes: UInt64) throws {
        guard let length = off_t(exactly: bytes) else { throw GodwitError("cannot stage \(bytes) bytes of pages: too large") }
        try OwnerOnly.directory(directory)
        let path = stagingPath(directory: directory, id: id)
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GodwitError.errno("create \(path)") }
        defer { close(fd) }
        let rc = posix_fallocate(fd, 0, length)
        guard rc == 0 else { throw GodwitError.errno("posix_fallocate \(path)", rc) }
    }

    public static func removeStaging(directory: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] where name.hasPrefix(".staging-pages-") {
            try? FileManager.default.removeItem(atPath: directory + "/" + name)
        }
    }

    /// pread/pwrite until done; offset -1 means "write sequentially" (plain write).
    private static func full(_ op: (Int32, UnsafeMutableRawPointer?, Int, off_t) -> Int, _ fd: Int32,
                             _ buffer: UnsafeMutableRawBufferPointer, _ offset: off_t, what: String) throws {
        var done = 0
        while done < buffer.count {
            let n = offset < 0 ? write(fd, buffer.baseAddress! + done, buffer.count - done)
                               : op(fd, buffer.baseAddress! + done, buffer.count - done, offset + off_t(done))
            if n < 0 && errno == EINTR { continue }
            if n == 0 { throw GodwitError("\(what): the file ends \(buffer.count - done) bytes early") }
            guard n > 0 else { throw GodwitError.errno(what) }
            done += n
        }
    }
}
