import CGodwit
import Foundation
import GodwitCore
import Memory

/// What one round moved, as the source saw it.
public struct RoundStats: Sendable {
    public var round: Int
    /// Pages the tracker reported (dirty set of this round).
    public var dirtyPages = 0
    /// Resident pages of the container's tracked mappings at the scan.
    public var residentPages = 0
    public var dataPages = 0
    public var zeroPages = 0
    public var droppedPages = 0
    /// Reported dirty but gone by the time we copied (unmapped meanwhile): sent as drops.
    public var vanishedPages = 0
    /// Chunks whose per-chunk write-protect failed (they will be reported again).
    public var protectFailures = 0
    public var bytesSent: UInt64 = 0
    public var scanNanos: UInt64 = 0
    /// Reading + sending (what bandwidth is measured on).
    public var copyNanos: UInt64 = 0
    /// Time from the previous round's scan to this one's: the window the dirty set grew in.
    public var intervalNanos: UInt64 = 0
    /// Pages dirtied per second in that window (nil for round 1, which sends everything).
    public var dirtyPagesPerSecond: Double? {
        round > 1 && intervalNanos > 0 ? Double(dirtyPages) / (Double(intervalNanos) / 1e9) : nil
    }
    public var processes = 0
    public var exitedProcesses = 0
    public var fallbacks: [String] = []
    /// Set by the session after the round: the pause this dirty set would need at the
    /// bandwidth measured so far, the policy's decision, and a CPU throttle it applied.
    public var predictedPauseSeconds: Double?
    public var decision = ""
    public var throttlePercent: Int?

    public init(round: Int) { self.round = round }
}

/// The source side of pre-copy: turns a DirtyScan into a stream of records. Order per
/// round: the caller scans, then this copies what the scan reported.
///
/// Protection per chunk (reports with `protectionDeferred`, i.e. uffd-wp): the scan left
/// the reported pages unprotected, and each chunk is write-protected right before it is
/// read. Why this is exact: a write before the chunk's protect is captured by the read
/// that follows it; a write after the protect faults (async wp) and is reported by the
/// next scan; pages the scan did not report were never unprotected, so they stay tracked.
/// Protecting at scan time instead would make every page written between the scan and
/// its chunk's read go out twice: now, with its new content, and again next round.
/// Other trackers (hashing, soft-dirty) reset at scan time: a write after the scan is
/// caught by the next one.
public final class PreCopySender {
    public let writer: PageRecordWriter
    /// Called after each chunk of a round with the pages (data + zero) and bytes sent so
    /// far in that round: the move's progress.
    public var onChunk: ((_ pagesSent: Int, _ bytesSent: UInt64) -> Void)?
    private let pageSize = Int(systemPageSize)
    private var buffer: UnsafeMutableRawBufferPointer

    public init(writer: PageRecordWriter) {
        self.writer = writer
        buffer = .allocate(byteCount: PageRecord.maxPages * Int(systemPageSize), alignment: 4096)
    }

    deinit { buffer.deallocate() }

    /// Sends one pre-copy round: forgets, drops, then the contents of every dirty page
    /// (all-zero pages as markers).
    public func sendRound(_ scan: DirtyScan, round: Int, tracker: DirtyTracker?) throws -> RoundStats {
        let t0 = DispatchTime.now().uptimeNanoseconds
        let before = writer.bytesWritten
        var stats = RoundStats(round: round)
        stats.dirtyPages = scan.dirtyPages
        stats.residentPages = scan.residentPages
        stats.scanNanos = scan.scanNanos
        stats.processes = scan.processes.count
        stats.exitedProcesses = scan.exited.count
        // Said once, when the process is first seen.
        stats.fallbacks = scan.processes.filter(\.isNew).compactMap { p in
            p.fallbackReason.map { "process \(p.process): \($0); tracked by hashing" }
        }
        let r = UInt32(round)
        var records: UInt64 = 0
        try writer.write(.roundStart, round: r); records += 1
        for gone in scan.exited {
            try writer.write(.forgetProcess, nsPID: gone.nsPID, round: r); records += 1
        }
        for report in scan.processes {
            let ns = report.process.nsPID
            if report.isNew { try writer.write(.forgetProcess, nsPID: ns, round: r); records += 1 }
            for range in report.dropped.chunks(maxPages: Int(UInt32.max)) {
                try writer.write(.drop, nsPID: ns, vaddr: range.lowerBound, pageCount: pages(range), round: r)
                records += 1
                stats.droppedPages += Int(pages(range))
            }
            for chunk in report.dirty.chunks(maxPages: PageRecord.maxPages) {
                if report.protectionDeferred, let tracker {
                    // Best effort: an unprotected page is only reported again (sent twice),
                    // never lost, so a failure here (process gone) must not fail the round.
                    do { try tracker.protectBeforeCopy(process: report.process, range: chunk) } catch { stats.protectFailures += 1 }
                }
                records += try copy(chunk, of: report.process, round: r, stats: &stats, tracker: tracker)
                onChunk?(stats.dataPages + stats.zeroPages, writer.bytesWritten - before)
            }
        }
        try writer.write(.roundEnd, vaddr: records, pageCount: UInt32(truncatingIfNeeded: stats.dataPages + stats.zeroPages), round: r)
        stats.bytesSent = writer.bytesWritten - before
        stats.copyNanos = DispatchTime.now().uptimeNanoseconds - t0
        return stats
    }

    /// The final scan's answer, sent without page contents: the destination forgets every
    /// page dirtied since it was sent (and every dropped or exited one); whatever it then
    /// lacks comes from CRIU's page server, frozen and therefore exact.
    public func sendInvalidations(_ scan: DirtyScan, round: Int) throws -> RoundStats {
        let before = writer.bytesWritten
        var stats = RoundStats(round: round)
        stats.dirtyPages = scan.dirtyPages
        stats.residentPages = scan.residentPages
        stats.scanNanos = scan.scanNanos
        let r = UInt32(round)
        var records: UInt64 = 0
        try writer.write(.roundStart, round: r); records += 1
        for gone in scan.exited { try writer.write(.forgetProcess, nsPID: gone.nsPID, round: r); records += 1 }
        for report in scan.processes {
            let ns = report.process.nsPID
            if report.isNew { try writer.write(.forgetProcess, nsPID: ns, round: r); records += 1 }
            for range in report.dropped.union(report.dirty).chunks(maxPages: Int(UInt32.max)) {
                try writer.write(.drop, nsPID: ns, vaddr: range.lowerBound, pageCount: pages(range), round: r)
                records += 1
                stats.droppedPages += Int(pages(range))
            }
        }
        try writer.write(.roundEnd, vaddr: records, pageCount: 0, round: r)
        stats.bytesSent = writer.bytesWritten - before
        return stats
    }

    private func pages(_ range: Range<UInt64>) -> UInt32 {
        UInt32((range.upperBound - range.lowerBound) / systemPageSize)
    }

    /// Reads `chunk` (<= 1 MiB) of the process and sends it as runs of data and zero
    /// records. Pages that can't be read (unmapped since the scan) are sent as drops.
    private func copy(_ chunk: Range<UInt64>, of process: TrackedProcess, round r: UInt32,
                      stats: inout RoundStats, tracker: DirtyTracker?) throws -> UInt64 {
        let count = Int((chunk.upperBound - chunk.lowerBound) / systemPageSize)
        var readable = cgw_process_vm_read(process.hostPID, buffer.baseAddress, chunk.lowerBound, count * pageSize)
        var valid = [Bool](repeating: false, count: count)
        if readable == count * pageSize {
            for i in 0..<count { valid[i] = true }
        } else {
            // Something in the chunk vanished: read page by page to keep what still exists.
            readable = 0
            for i in 0..<count {
                let n = cgw_process_vm_read(process.hostPID, buffer.baseAddress! + i * pageSize,
                                            chunk.lowerBound + UInt64(i * pageSize), pageSize)
                valid[i] = n == pageSize
            }
        }
        // 0 = vanished, 1 = zero, 2 = data
        var kinds = [UInt8](repeating: 0, count: count)
        for i in 0..<count where valid[i] {
            let page = UnsafeRawBufferPointer(rebasing: buffer[(i * pageSize)..<((i + 1) * pageSize)])
            kinds[i] = PageHash.isZero(page) ? 1 : 2
            tracker?.noteCopied(process: process, address: chunk.lowerBound + UInt64(i * pageSize), page: page)
        }
        var records: UInt64 = 0
        var i = 0
        while i < count {
            var j = i + 1
            while j < count, kinds[j] == kinds[i] { j += 1 }
            let vaddr = chunk.lowerBound + UInt64(i * pageSize)
            let n = UInt32(j - i)
            switch kinds[i] {
            case 2:
                try writer.write(.pages, nsPID: process.nsPID, vaddr: vaddr, pageCount: n, round: r,
                                 payload: UnsafeRawBufferPointer(rebasing: buffer[(i * pageSize)..<(j * pageSize)]))
                stats.dataPages += j - i
            case 1:
                try writer.write(.zero, nsPID: process.nsPID, vaddr: vaddr, pageCount: n, round: r)
                stats.zeroPages += j - i
            default:
                try writer.write(.drop, nsPID: process.nsPID, vaddr: vaddr, pageCount: n, round: r)
                stats.vanishedPages += j - i
            }
            records += 1
            i = j
        }
        return records
    }
}
