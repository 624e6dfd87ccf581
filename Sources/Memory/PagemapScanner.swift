import CGodwit
import Foundation
import GodwitCore

/// PAGEMAP_SCAN page categories (Linux 6.7+), as reported per region.
public struct PageCategories: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The VMA is registered for async uffd-wp (so writes to it are tracked).
    public static let wpAllowed = PageCategories(rawValue: UInt64(PAGE_IS_WPALLOWED))
    /// Not write-protected: written since the last protecting scan. Recent kernels also
    /// set it on empty ptes of uffd-wp VMAs; combine with present/swapped to exclude those.
    public static let written = PageCategories(rawValue: UInt64(PAGE_IS_WRITTEN))
    public static let file = PageCategories(rawValue: UInt64(PAGE_IS_FILE))
    public static let present = PageCategories(rawValue: UInt64(PAGE_IS_PRESENT))
    /// Swapped out, or an empty pte carrying a uffd-wp marker.
    public static let swapped = PageCategories(rawValue: UInt64(PAGE_IS_SWAPPED))
    public static let pfnZero = PageCategories(rawValue: UInt64(PAGE_IS_PFNZERO))
    public static let huge = PageCategories(rawValue: UInt64(PAGE_IS_HUGE))
    public static let softDirty = PageCategories(rawValue: UInt64(PAGE_IS_SOFT_DIRTY))
    public static let guardRegion = PageCategories(rawValue: UInt64(PAGE_IS_GUARD))

    public static let all: PageCategories = [.wpAllowed, .written, .file, .present, .swapped,
                                             .pfnZero, .huge, .softDirty, .guardRegion]

    public var description: String {
        let names: [(PageCategories, String)] = [
            (.wpAllowed, "wpallowed"), (.written, "written"), (.file, "file"), (.present, "present"),
            (.swapped, "swapped"), (.pfnZero, "pfnzero"), (.huge, "huge"), (.softDirty, "softdirty"),
            (.guardRegion, "guard"),
        ]
        return "[" + names.filter { contains($0.0) }.map(\.1).joined(separator: ",") + "]"
    }
}

/// A run of pages with the same categories: [start, end).
public struct PageRegion: Sendable, Hashable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    public var categories: PageCategories

    public init(start: UInt64, end: UInt64, categories: PageCategories) {
        self.start = start
        self.end = end
        self.categories = categories
    }

    public var range: Range<UInt64> { start..<end }
    public var pageCount: Int { Int((end - start) / systemPageSize) }
    /// Page addresses in the region.
    public var pageAddresses: StrideTo<UInt64> { stride(from: start, to: end, by: Int(systemPageSize)) }

    public var description: String {
        "\(String(start, radix: 16))-\(String(end, radix: 16)) \(categories)"
    }
}

extension Array where Element == PageRegion {
    public var pageCount: Int { reduce(0) { $0 + $1.pageCount } }
}

/// Asks the kernel which pages of a process are in which state (PAGEMAP_SCAN on
/// /proc/PID/pagemap, opened read-only), optionally write-protecting the matches in the
/// same walk. This is the "read and reset the dirty bits" half of uffd-wp tracking; the
/// registration half is RemoteUserfaultfd.
///
/// Not thread-safe: one scan at a time (it reuses one result buffer).
public final class PagemapScanner {
    public struct Query: Sendable {
        /// Pages must have all of these (after `inverted` is applied).
        public var categoryMask: PageCategories = []
        /// ...and at least one of these (if non-empty).
        public var anyOf: PageCategories = []
        /// Categories whose meaning is flipped for matching (e.g. mask+inverted wpAllowed
        /// = "not tracked").
        public var inverted: PageCategories = []
        /// Categories reported back; regions are split where these differ.
        public var returnMask: PageCategories = .all
        /// PM_SCAN_WP_MATCHING: write-protect what matched, atomically with reporting it.
        public var writeProtect = false
        /// PM_SCAN_CHECK_WPASYNC: fail (EPERM) on a VMA not registered for async uffd-wp
        /// instead of silently skipping it.
        public var requireTracked = false

        public init(categoryMask: PageCategories = [], anyOf: PageCategories = [],
                    inverted: PageCategories = [], returnMask: PageCategories = .all,
                    writeProtect: Bool = false, requireTracked: Bool = false) {
            self.categoryMask = categoryMask
            self.anyOf = anyOf
            self.inverted = inverted
            self.returnMask = returnMask
            self.writeProtect = writeProtect
            self.requireTracked = requireTracked
        }

        /// Pages written since the last protecting scan, protected again in the same walk.
        /// Marker-free: the kernel (6.7+ with WP_UNPOPULATED) counts EMPTY ptes of a uffd-wp
        /// VMA as written too, and protecting them installs uffd-wp markers, which CRIU
        /// later dumps as real zero pages (and which cost a page-table walk each round).
        /// Requiring present-or-swapped leaves empty ptes alone; a page first touched
        /// later is still caught, since its fresh pte carries no wp bit.
        public static func writtenAndReprotect(requireTracked: Bool = false) -> Query {
            Query(categoryMask: .written, anyOf: [.present, .swapped],
                  returnMask: [.written, .present, .swapped, .pfnZero],
                  writeProtect: true, requireTracked: requireTracked)
        }

        /// The same pages as `writtenAndReprotect`, left writable: the caller protects each
        /// part right before copying it (`protectWritten(in:)`), so a write landing between
        /// this scan and that copy is carried by the copy instead of being sent again.
        public static func writtenOnly(requireTracked: Bool = false) -> Query {
            var query = writtenAndReprotect(requireTracked: requireTracked)
            query.writeProtect = false
            return query
        }

        /// Resident pages (present or swapped), for resident-set comparisons.
        public static let resident = Query(anyOf: [.present, .swapped], returnMask: [.present, .swapped])

        /// Address ranges in VMAs NOT registered for async uffd-wp.
        public static let untracked = Query(categoryMask: .wpAllowed, inverted: .wpAllowed,
                                            returnMask: .wpAllowed)
    }

    public let pid: pid_t
    /// Regions fetched per ioctl (the kernel itself works in batches of 512).
    public let capacity: Int
    /// PAGEMAP_SCAN ioctls issued so far (shows when a scan needed resuming).
    public private(set) var ioctlCount = 0

    private var fd: Int32
    private let buffer: UnsafeMutablePointer<page_region>

    public init(pid: pid_t, capacity: Int = 4096) throws {
        precondition(capacity > 0)
        let path = "/proc/\(pid)/pagemap"
        fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            throw GodwitError.errno("open(\(path))", hint: "the process is gone, or this needs root")
        }
        self.pid = pid
        self.capacity = capacity
        buffer = .allocate(capacity: capacity)
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
        buffer.deallocate()
    }

    /// Runs `query` over `range` (page aligned), resuming until the whole range is walked,
    /// and returns regions in address order with adjacent equal regions merged (the
    /// kernel splits them at its batch boundaries).
    public func scan(_ range: Range<UInt64>, _ query: Query) throws -> [PageRegion] {
        var regions: [PageRegion] = []
        var start = range.lowerBound
        while start < range.upperBound {
            var arg = pm_scan_arg()
            arg.flags = (query.writeProtect ? UInt64(PM_SCAN_WP_MATCHING) : 0)
                | (query.requireTracked ? UInt64(PM_SCAN_CHECK_WPASYNC) : 0)
            arg.start = start
            arg.end = range.upperBound
            arg.vec = UInt64(UInt(bitPattern: buffer))
            arg.vec_len = UInt64(capacity)
            arg.category_mask = query.categoryMask.rawValue
            arg.category_anyof_mask = query.anyOf.rawValue
            arg.category_inverted = query.inverted.rawValue
            arg.return_mask = query.returnMask.rawValue
            let n = cgw_pagemap_scan(fd, &arg)
            ioctlCount += 1
            if n < 0 {
                let what = "PAGEMAP_SCAN on process \(pid) [\(String(start, radix: 16))-\(String(range.upperBound, radix: 16))]"
                throw GodwitError.cgw(what, n, hint: Self.hint(for: Int32(-n)))
            }
            for i in 0..<n {
                let r = buffer[i]
                let region = PageRegion(start: r.start, end: r.end, categories: PageCategories(rawValue: r.categories))
                if let last = regions.last, last.end == region.start, last.categories == region.categories {
                    regions[regions.count - 1].end = region.end
                } else {
                    regions.append(region)
                }
            }
            // Handles the stale walk_end after the kernel's 512-region batches (see cgw_memory.h).
            let next = cgw_pagemap_scan_next_start(&arg, n, UInt64(capacity))
            if next == 0 { break }
            guard next > start else {
                throw GodwitError("PAGEMAP_SCAN on process \(pid) made no progress at 0x\(String(start, radix: 16))",
                                  hint: "kernel bug or unexpected walk_end; use the hashing tracker")
            }
            start = next
        }
        return regions
    }

    /// Pages written since the last call, write-protected again (the tracking round).
    public func collectWritten(in range: Range<UInt64>, requireTracked: Bool = false) throws -> [PageRegion] {
        try scan(range, .writtenAndReprotect(requireTracked: requireTracked))
    }

    /// Pages written since the last call, left unprotected (see `Query.writtenOnly`).
    public func collectWrittenWithoutProtecting(in range: Range<UInt64>) throws -> [PageRegion] {
        try scan(range, .writtenOnly())
    }

    /// Write-protects the written pages of `range` (nothing else changes): the per-chunk
    /// half of deferred protection. Same marker-free query as a protecting scan, so empty
    /// ptes stay empty and VMAs not registered for uffd-wp are skipped silently.
    @discardableResult
    public func protectWritten(in range: Range<UInt64>) throws -> [PageRegion] {
        try scan(range, .writtenAndReprotect())
    }

    private static func hint(for code: Int32) -> String? {
        switch code {
        case ENOTTY: return "PAGEMAP_SCAN needs Linux 6.7 or newer; use the hashing tracker"
        case EPERM: return "a mapping in the range is not registered for uffd-wp (new mmap/brk?): register it and scan again"
        case EINVAL: return "the range must be page aligned and within the address space"
        default: return nil
        }
    }
}
