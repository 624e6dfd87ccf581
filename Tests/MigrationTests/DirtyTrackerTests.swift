import Foundation
import GodwitCore
@testable import Memory
@testable import Migration
import Testing

/// The container-level tracker over probe children standing in for a container's
/// processes: forks (new processes), exits, dropped pages, fallbacks.
@Suite(.serialized) struct DirtyTrackerTests {
    func indexes(_ ranges: PageRanges, in target: ProbeTarget) -> [Int] {
        ranges.intersection(PageRanges([target.range])).ranges.flatMap { r in
            stride(from: r.lowerBound, to: r.upperBound, by: Int(systemPageSize)).map(target.page(at:))
        }
    }

    func report(_ scan: DirtyScan, _ target: ProbeTarget) -> ProcessDirtyReport? {
        scan.processes.first { $0.process.hostPID == target.pid }
    }

    @Test(arguments: [DirtyTrackerKind.uffdWP, .hashing])
    func followsWritesForksExitsAndDrops(kind: DirtyTrackerKind) throws {
        let a = try ProbeTarget(pages: 32), b = try ProbeTarget(pages: 16)
        defer { a.terminate(); b.terminate() }
        var members = [a.pid, b.pid]
        let tracker = ContainerDirtyTracker(kind: kind, listProcesses: { members.compactMap { TrackedProcess.of(hostPID: $0) } })
        defer { tracker.close() }

        let first = try tracker.scan()
        #expect(first.processes.count == 2 && first.processes.allSatisfy { $0.isNew && $0.tracker == kind })
        #expect(indexes(try #require(report(first, a)).dirty, in: a) == Array(0..<32), "round 1: everything resident")

        try a.write(pages: [2, 5])
        try b.write(page: 1)
        let second = try tracker.scan()
        #expect(indexes(try #require(report(second, a)).dirty, in: a) == [2, 5])
        #expect(indexes(try #require(report(second, b)).dirty, in: b) == [1])
        #expect(second.processes.allSatisfy { !$0.isNew })

        // A dropped page leaves the resident set: reported so the destination forgets it.
        try a.drop(page: 7)
        // A "fork": a new process joins, another exits.
        let c = try ProbeTarget(pages: 8)
        defer { c.terminate() }
        members = [a.pid, c.pid]
        let bPID = b.pid
        b.terminate()
        let third = try tracker.scan()
        #expect(indexes(try #require(report(third, a)).dropped, in: a) == [7])
        #expect(indexes(try #require(report(third, a)).dirty, in: a) == [])
        #expect(third.exited.map(\.hostPID) == [bPID])
        let cr = try #require(report(third, c))
        #expect(cr.isNew && indexes(cr.dirty, in: c) == Array(0..<8))

        // Re-touching the dropped page makes it dirty again (a fresh zero page).
        try a.write(page: 7)
        #expect(indexes(try #require(report(try tracker.scan(), a)).dirty, in: a) == [7])
    }

    /// userfaultfd refused (as under a seccomp profile): that process is hashed instead.
    @Test func fallsBackToHashingPerProcess() throws {
        let a = try ProbeTarget(pages: 16), b = try ProbeTarget(pages: 16)
        defer { a.terminate(); b.terminate() }
        let refused = b.pid
        let tracker = ContainerDirtyTracker(
            kind: .uffdWP, listProcesses: { [a.pid, b.pid].compactMap { TrackedProcess.of(hostPID: $0) } },
            makeTracker: { pid, kind in
                if pid == refused && kind == .uffdWP {
                    throw GodwitError("userfaultfd(2) inside process \(pid) failed: EPERM")
                }
                return try ContainerDirtyTracker.defaultFactory(pid: pid, kind: kind)
            })
        defer { tracker.close() }
        let first = try tracker.scan()
        #expect(report(first, a)?.tracker == .uffdWP && report(first, a)?.fallbackReason == nil)
        #expect(report(first, b)?.tracker == .hashing)
        #expect(report(first, b)?.fallbackReason?.contains("EPERM") == true)
        try b.write(pages: [3, 9])
        #expect(indexes(try #require(report(try tracker.scan(), b)).dirty, in: b) == [3, 9])
    }

    /// While frozen, new processes can't be attached (ptrace can't stop frozen tasks):
    /// they are reported untracked, every resident page dirty.
    @Test func newProcessesWhileFrozenAreFullyDirty() throws {
        let a = try ProbeTarget(pages: 8)
        defer { a.terminate() }
        let tracker = ContainerDirtyTracker(kind: .uffdWP, listProcesses: { [TrackedProcess.of(hostPID: a.pid)].compactMap { $0 } })
        defer { tracker.close() }
        let scan = try tracker.scan(attachNew: false)
        let r = try #require(report(scan, a))
        #expect(r.tracker == nil && r.isNew && indexes(r.dirty, in: a) == Array(0..<8))
    }

    /// The hashing tracker compares against what was SENT: A (scan) -> B (copied) -> A
    /// (next scan) must be reported, or the destination would keep B.
    @Test func hashingComparesWithWhatWasCopied() throws {
        let a = try ProbeTarget(pages: 8)
        defer { a.terminate() }
        let hashing = try HashingProcessTracker(pid: a.pid)
        let tracked = PageRanges([a.range])
        #expect(try hashing.collect(in: tracked).pageCount == 8)
        // Pretend the copy of page 4 saw other content than the scan did.
        let other = [UInt8](repeating: 0x5A, count: Int(systemPageSize))
        other.withUnsafeBytes { hashing.noteCopied(address: a.address(ofPage: 4), page: $0) }
        #expect(indexes(try hashing.collect(in: tracked), in: a) == [4])
        #expect(try hashing.collect(in: tracked).isEmpty)
    }

    /// Soft-dirty logic (this kernel has no soft-dirty: pagemap bit 55 never sets, so only
    /// the first round and the clearing protocol can be checked here).
    @Test func softDirtyClearsEveryRoundAndFreezesTheContainer() throws {
        let a = try ProbeTarget(pages: 8)
        defer { a.terminate() }
        var clears = 0, freezes = 0
        let tracker = ContainerDirtyTracker(
            kind: .softDirty, listProcesses: { [TrackedProcess.of(hostPID: a.pid)].compactMap { $0 } },
            makeTracker: { pid, _ in try SoftDirtyProcessTracker(pid: pid, clearRefs: { clears += 1 }) },
            whileFrozen: { body in freezes += 1; try body() })
        defer { tracker.close() }
        let first = try tracker.scan()
        #expect(indexes(try #require(report(first, a)).dirty, in: a) == Array(0..<8))
        try a.write(page: 3)
        _ = try tracker.scan()
        #expect(clears == 2 && freezes == 2, "read+clear happen inside one freeze per round")
        // Frozen already (final phase): no extra freeze.
        _ = try tracker.scan(attachNew: false)
        #expect(freezes == 2 && clears == 3)
    }

    /// Protection per chunk (uffd-wp): a write between the scan and its chunk's read goes
    /// out with that read and is NOT reported again; a write right after the chunk's read
    /// is. Scan-time protection (deferred: false) reports both: the duplicate this removes.
    @Test(arguments: [true, false])
    func perChunkProtectionSendsMidRoundWritesOnce(deferred: Bool) throws {
        let a = try ProbeTarget(pages: 16)
        defer { a.terminate() }
        let tracker = ContainerDirtyTracker(kind: .uffdWP, listProcesses: { [TrackedProcess.of(hostPID: a.pid)].compactMap { $0 } })
        defer { tracker.close() }
        let sender = PreCopySender(writer: PageRecordWriter(sink: MemoryByteStream()))
        _ = try sender.sendRound(try tracker.scan(deferProtection: deferred), round: 1, tracker: tracker)

        try a.write(pages: [2, 9])  // two chunks: 2..<3 is read before 9..<10
        let scan = try tracker.scan(deferProtection: deferred)
        let dirty = try #require(report(scan, a))
        #expect(indexes(dirty.dirty, in: a) == [2, 9])
        #expect(dirty.protectionDeferred == deferred)
        try a.write(page: 9)  // after the scan, before page 9's chunk is read
        let chunks = dirty.dirty.chunks(maxPages: PageRecord.maxPages)
        let chunkOf2 = try #require(chunks.firstIndex { $0.contains(a.address(ofPage: 2)) })
        var sent = 0
        var wroteAfterRead = false
        sender.onChunk = { _, _ in
            sent += 1
            if sent == chunkOf2 + 1 { wroteAfterRead = (try? a.write(page: 2)) != nil }
        }
        let stats = try sender.sendRound(scan, round: 2, tracker: tracker)
        #expect(wroteAfterRead && stats.protectFailures == 0)
        let next = try #require(report(try tracker.scan(deferProtection: deferred), a))
        #expect(indexes(next.dirty, in: a) == (deferred ? [2] : [2, 9]))
    }
}
