import Foundation

/// A set of page-aligned address ranges, kept sorted, non-overlapping and coalesced. The
/// trackers speak in these: "dirty", "resident", "dropped" are all sets of ranges, and the
/// round logic needs union, difference and intersection of them.
public struct PageRanges: Sendable, Equatable, CustomStringConvertible {
    public private(set) var ranges: [Range<UInt64>] = []

    public init() {}

    /// Normalizes arbitrary (unsorted, overlapping, adjacent) ranges.
    public init<S: Sequence>(_ input: S) where S.Element == Range<UInt64> {
        let sorted = input.filter { !$0.isEmpty }.sorted { $0.lowerBound < $1.lowerBound }
        for r in sorted {
            if let last = ranges.last, r.lowerBound <= last.upperBound {
                if r.upperBound > last.upperBound { ranges[ranges.count - 1] = last.lowerBound..<r.upperBound }
            } else {
                ranges.append(r)
            }
        }
    }

    /// Already sorted and coalesced (e.g. PAGEMAP_SCAN output after merging): no re-sort.
    init(sortedCoalesced: [Range<UInt64>]) { ranges = sortedCoalesced }

    public var isEmpty: Bool { ranges.isEmpty }
    public var byteCount: UInt64 { ranges.reduce(0) { $0 + ($1.upperBound - $1.lowerBound) } }
    public var pageCount: Int { Int(byteCount / systemPageSize) }

    public func contains(_ address: UInt64) -> Bool {
        var lo = 0, hi = ranges.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ranges[mid].upperBound <= address { lo = mid + 1 } else { hi = mid }
        }
        return lo < ranges.count && ranges[lo].contains(address)
    }

    public func union(_ other: PageRanges) -> PageRanges {
        if other.isEmpty { return self }
        if isEmpty { return other }
        return PageRanges(ranges + other.ranges)
    }

    /// self ∩ other, by a linear merge of the two sorted lists.
    public func intersection(_ other: PageRanges) -> PageRanges {
        var out: [Range<UInt64>] = []
        var i = 0, j = 0
        while i < ranges.count, j < other.ranges.count {
            let a = ranges[i], b = other.ranges[j]
            let lo = max(a.lowerBound, b.lowerBound), hi = min(a.upperBound, b.upperBound)
            if lo < hi { out.append(lo..<hi) }
            if a.upperBound < b.upperBound { i += 1 } else { j += 1 }
        }
        return PageRanges(sortedCoalesced: out)
    }

    /// self \ other.
    public func subtracting(_ other: PageRanges) -> PageRanges {
        if other.isEmpty || isEmpty { return self }
        var out: [Range<UInt64>] = []
        var j = 0
        for r in ranges {
            var start = r.lowerBound
            while j < other.ranges.count, other.ranges[j].upperBound <= start { j += 1 }
            var k = j
            while k < other.ranges.count, other.ranges[k].lowerBound < r.upperBound {
                let cut = other.ranges[k]
                if cut.lowerBound > start { out.append(start..<cut.lowerBound) }
                start = max(start, cut.upperBound)
                if cut.upperBound >= r.upperBound { break }
                k += 1
            }
            if start < r.upperBound { out.append(start..<r.upperBound) }
        }
        return PageRanges(sortedCoalesced: out)
    }

    /// Splits every range into pieces of at most `pages` pages (reads and records are
    /// bounded in size).
    public func chunks(maxPages pages: Int) -> [Range<UInt64>] {
        let step = UInt64(pages) * systemPageSize
        var out: [Range<UInt64>] = []
        for r in ranges {
            var s = r.lowerBound
            while s < r.upperBound {
                let e = min(r.upperBound, s + step)
                out.append(s..<e)
                s = e
            }
        }
        return out
    }

    public var description: String {
        "[" + ranges.map { "\(String($0.lowerBound, radix: 16))-\(String($0.upperBound, radix: 16))" }.joined(separator: " ") + "]"
    }
}
