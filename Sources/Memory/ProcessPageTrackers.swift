import CGodwit
import Foundation
import GodwitCore

/// Learns which pages ONE process wrote since the last call. The container-level
/// DirtyTracker composes one per process and adds what a single process's view can't
/// know (forks, exits, dropped pages, moved mappings).
///
/// Contract of `collect(in:)`: returns the pages, inside `tracked` (the process's writable
/// private mappings as read this round), whose content may differ from what the previous
/// call's caller copied. The FIRST call returns every resident page. Scan first, then copy:
/// a write landing after the scan is reported by the next call.
public protocol ProcessWriteTracker: AnyObject {
    var kind: DirtyTrackerKind { get }
    var pid: pid_t { get }
    /// Soft-dirty reads then clears bits in two steps: the process must not run in between.
    var needsQuiescentScan: Bool { get }
    func collect(in tracked: PageRanges) throws -> PageRanges
    /// Whether this tracker can defer protection to copy time (see `collect(in:deferProtection:)`).
    var canProtectPerChunk: Bool { get }
    /// `deferProtection: true` (only if `canProtectPerChunk`): report like `collect(in:)`
    /// but leave the reported pages unprotected; the caller then calls `protectBeforeCopy`
    /// on each range right before reading it. Trackers without the capability ignore the
    /// flag and protect (reset) at scan time.
    func collect(in tracked: PageRanges, deferProtection: Bool) throws -> PageRanges
    /// Re-arms write detection for `range` only; called right before `range` is read.
    func protectBeforeCopy(_ range: Range<UInt64>) throws
    /// Told what was actually copied for a page (after collect). The hashing tracker must
    /// compare next round against the content SENT, not the content it saw while scanning:
    /// otherwise A (scan) -> B (copy) -> A (next scan) would look unchanged while the
    /// destination holds B.
    func noteCopied(address: UInt64, page: UnsafeRawBufferPointer)
    func close()
}

extension ProcessWriteTracker {
    public func noteCopied(address: UInt64, page: UnsafeRawBufferPointer) {}
    public var canProtectPerChunk: Bool { false }
    public func collect(in tracked: PageRanges, deferProtection: Bool) throws -> PageRanges {
        try collect(in: tracked)
    }
    public func protectBeforeCopy(_ range: Range<UInt64>) throws {}
}

/// Raw /proc/PID/pagemap entries (8 bytes per page): works on every kernel, unlike
/// PAGEMAP_SCAN (6.7+). Used by the soft-dirty and hashing trackers and as the
/// resident-set fallback.
public final class PagemapReader {
    public static let present: UInt64 = 1 << 63
    public static let swapped: UInt64 = 1 << 62
    public static let softDirty: UInt64 = 1 << 55

    public let pid: pid_t
    private let fd: Int32

    public init(pid: pid_t) throws {
        fd = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GodwitError.errno("open(/proc/\(pid)/pagemap)", hint: "the process is gone, or this needs root") }
        self.pid = pid
    }

    deinit { Glibc.close(fd) }

    /// Pages of `ranges` whose entry has any bit of `anyOf` and (if non-zero) every bit of `allOf`.
    public func pages(in ranges: PageRanges, anyOf: UInt64, allOf: UInt64 = 0) throws -> PageRanges {
        var out: [Range<UInt64>] = []
        let batch = 8192  // entries per pread: 64 KiB, 32 MiB of address space
        var entries = [UInt64](repeating: 0, count: batch)
        for r in ranges.ranges {
            var page = r.lowerBound / systemPageSize
            let endPage = r.upperBound / systemPageSize
            while page < endPage {
                let n = Int(min(UInt64(batch), endPage - page))
                let got = entries.withUnsafeMutableBytes { pread(fd, $0.baseAddress, n * 8, off_t(page * 8)) }
                guard got >= 0 else { throw GodwitError.errno("pread(/proc/\(pid)/pagemap)") }
                let count = got / 8
                if count == 0 { break }
                for i in 0..<count {
                    let e = entries[i]
                    guard e & anyOf != 0, e & allOf == allOf else { continue }
                    let a = (page + UInt64(i)) * systemPageSize
                    if let last = out.last, last.upperBound == a {
                        out[out.count - 1] = last.lowerBound..<(a + systemPageSize)
                    } else {
                        out.append(a..<(a + systemPageSize))
                    }
                }
                page += UInt64(count)
            }
        }
        return PageRanges(sortedCoalesced: out)
    }

    public func resident(in ranges: PageRanges) throws -> PageRanges {
        try pages(in: ranges, anyOf: Self.present | Self.swapped)
    }
}

/// uffd-wp async + PAGEMAP_SCAN (UffdWriteTracker), marker-free. Mappings the kernel
/// refused to register are not tracked: their resident pages are reported every round.
public final class UffdProcessTracker: ProcessWriteTracker {
    public let kind = DirtyTrackerKind.uffdWP
    public var pid: pid_t { tracker.pid }
    public let needsQuiescentScan = false
    public let tracker: UffdWriteTracker

    public init(pid: pid_t) throws { tracker = try UffdWriteTracker(pid: pid) }

    public var canProtectPerChunk: Bool { true }

    public func collect(in tracked: PageRanges) throws -> PageRanges {
        try collect(in: tracked, deferProtection: false)
    }

    public func collect(in tracked: PageRanges, deferProtection: Bool) throws -> PageRanges {
        let written = try tracker.collectWritten(protect: !deferProtection)
        var result = PageRanges(written.map(\.range)).intersection(tracked)
        let refused = tracker.lastRegistration.refused.map(\.mapping.range)
        if !refused.isEmpty {
            let untracked = PageRanges(refused).intersection(tracked)
            let resident = try tracker.scanner.scan(untracked.ranges.first!.lowerBound..<untracked.ranges.last!.upperBound, .resident)
            result = result.union(PageRanges(resident.map(\.range)).intersection(untracked))
        }
        return result
    }

    public func protectBeforeCopy(_ range: Range<UInt64>) throws { try tracker.protect(range) }

    public func close() { tracker.close() }
}

/// Soft-dirty (CONFIG_MEM_SOFT_DIRTY): `clear_refs 4` clears the bits, a write sets pagemap
/// bit 55 again. Reading the bits and clearing them are two steps, so the caller freezes
/// the process around collect() (needsQuiescentScan), as CRIU's pre-dump does.
public final class SoftDirtyProcessTracker: ProcessWriteTracker {
    public let kind = DirtyTrackerKind.softDirty
    public let pid: pid_t
    public let needsQuiescentScan = true
    private let reader: PagemapReader
    private var first = true
    /// Where "4" goes; injectable so the logic is testable on kernels without soft-dirty.
    private let clearRefs: () throws -> Void

    public init(pid: pid_t, reader: PagemapReader? = nil, clearRefs: (() throws -> Void)? = nil) throws {
        self.pid = pid
        self.reader = try reader ?? PagemapReader(pid: pid)
        self.clearRefs = clearRefs ?? {
            let path = "/proc/\(pid)/clear_refs"
            let fd = open(path, O_WRONLY | O_CLOEXEC)
            guard fd >= 0 else { throw GodwitError.errno("open(\(path))") }
            defer { Glibc.close(fd) }
            guard write(fd, "4", 1) == 1 else {
                throw GodwitError.errno("write 4 to \(path)", hint: "kernel without CONFIG_MEM_SOFT_DIRTY: use uffd-wp or hashing")
            }
        }
    }

    public func collect(in tracked: PageRanges) throws -> PageRanges {
        let resident = PagemapReader.present | PagemapReader.swapped
        // First round: everything resident; later rounds: resident pages with bit 55.
        let result = first ? try reader.pages(in: tracked, anyOf: resident)
                           : try reader.pages(in: tracked, anyOf: resident, allOf: PagemapReader.softDirty)
        try clearRefs()
        first = false
        return result
    }

    public func close() {}
}

/// Content hashing: process_vm_readv in 1 MiB chunks, XXH3-64 per page, compared with the
/// previous round's hash. Works wherever we may read the process (no userfaultfd, no
/// soft-dirty), at the price of reading all resident memory every round. Reports changed
/// and newly resident pages; pages that left the resident set are forgotten here (the
/// container tracker reports them as dropped).
public final class HashingProcessTracker: ProcessWriteTracker {
    public let kind = DirtyTrackerKind.hashing
    public let pid: pid_t
    public let needsQuiescentScan = false
    private let reader: PagemapReader
    private var hashes: [UInt64: UInt64] = [:]
    private let chunkBytes = 1 << 20
    private var buffer: UnsafeMutableRawBufferPointer
    public private(set) var bytesHashed: UInt64 = 0

    public init(pid: pid_t) throws {
        self.pid = pid
        reader = try PagemapReader(pid: pid)
        buffer = .allocate(byteCount: chunkBytes, alignment: 4096)
    }

    deinit { buffer.deallocate() }

    public func collect(in tracked: PageRanges) throws -> PageRanges {
        let resident = try reader.resident(in: tracked)
        var next: [UInt64: UInt64] = [:]
        next.reserveCapacity(resident.pageCount)
        var dirty: [Range<UInt64>] = []
        let page = Int(systemPageSize)
        for chunk in resident.chunks(maxPages: chunkBytes / page) {
            let length = Int(chunk.upperBound - chunk.lowerBound)
            let n = cgw_process_vm_read(pid, buffer.baseAddress, chunk.lowerBound, length)
            // Short or failed read: the mapping changed under us. Unread pages count as
            // dirty (the copy step finds out whether they still exist).
            let readBytes = n < 0 ? 0 : n
            bytesHashed += UInt64(readBytes)
            for offset in stride(from: 0, to: length, by: page) {
                let address = chunk.lowerBound + UInt64(offset)
                var changed = true
                if offset + page <= readBytes {
                    let h = PageHash.xxh3(UnsafeRawBufferPointer(rebasing: buffer[offset..<offset + page]))
                    next[address] = h
                    changed = hashes[address] != h
                }
                if changed {
                    if let last = dirty.last, last.upperBound == address {
                        dirty[dirty.count - 1] = last.lowerBound..<(address + systemPageSize)
                    } else {
                        dirty.append(address..<(address + systemPageSize))
                    }
                }
            }
        }
        hashes = next
        return PageRanges(sortedCoalesced: dirty)
    }

    public func noteCopied(address: UInt64, page: UnsafeRawBufferPointer) {
        hashes[address] = PageHash.xxh3(page)
    }

    public func close() { hashes = [:] }
}
