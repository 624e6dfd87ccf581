import CGodwit
import Foundation
import GodwitCore
import Testing
@testable import Memory

/// Page indexes (relative to the probe block) that a scan reported.
func pageIndexes(_ regions: [PageRegion], in target: ProbeTarget) -> [Int] {
    regions.flatMap { $0.pageAddresses.map(target.page(at:)) }
}

/// Starts a probe child and a tracker on it and protects everything (round 0); the child
/// is killed and reaped when `body` returns or throws.
func withTrackedTarget<T>(pages: Int, scanCapacity: Int = 4096,
                          _ body: (ProbeTarget, UffdWriteTracker) throws -> T) throws -> T {
    let target = try ProbeTarget(pages: pages)
    defer { target.terminate() }
    let tracker = try UffdWriteTracker(pid: target.pid, scanCapacity: scanCapacity)
    defer { tracker.close() }
    let initial = try tracker.collectWritten(in: target.range)
    #expect(initial.pageCount == pages, "round 0 reports every resident page")
    return try body(target, tracker)
}

@Suite struct WriteTrackingTests {
    enum Pattern: String, CaseIterable, CustomTestStringConvertible {
        case none, all, twoAndFive, firstAndLast, runs, everyThird
        var testDescription: String { rawValue }

        func pages(of count: Int) -> [Int] {
            switch self {
            case .none: return []
            case .all: return Array(0..<count)
            case .twoAndFive: return [2, 5]
            case .firstAndLast: return [0, count - 1]
            case .runs: return Array(3..<9) + Array(20..<21) + Array(40..<64)
            case .everyThird: return Array(stride(from: 1, to: count, by: 3))
            }
        }
    }

    @Test(arguments: Pattern.allCases)
    func reportsExactlyTheWrittenPages(_ pattern: Pattern) throws {
        try withTrackedTarget(pages: 64) { target, tracker in
            let truth = pattern.pages(of: target.pages)
            try target.write(pages: truth)
            let written = try tracker.collectWritten(in: target.range)
            #expect(pageIndexes(written, in: target) == truth)
            #expect(written.allSatisfy { $0.categories.contains(.written) })
            let again = try tracker.collectWritten(in: target.range)
            #expect(again.isEmpty, "nothing written since the last scan")
        }
    }

    /// 1000 separate regions: more than the kernel's 512-region batch, so walk_end goes
    /// stale inside one ioctl, and (with small capacities) more than our buffer, so the
    /// scan must resume. Every capacity must give the same exact answer.
    @Test(arguments: [4096, 1000, 512, 333, 7])
    func everyOtherPageOf2000AcrossBatchBoundaries(capacity: Int) throws {
        try withTrackedTarget(pages: 2000, scanCapacity: capacity) { target, tracker in
            try target.write(first: 0, count: 1000, stride: 2)
            let callsBefore = tracker.scanner.ioctlCount
            let written = try tracker.collectWritten(in: target.range, refresh: false)
            #expect(written.count == 1000)
            #expect(pageIndexes(written, in: target) == Array(stride(from: 0, to: 2000, by: 2)))
            let calls = tracker.scanner.ioctlCount - callsBefore
            // ceil(1000 / capacity) full buffers, plus one that comes back short when the
            // count divides evenly (that is how the end of the walk is recognised).
            #expect(calls == 1000 / capacity + 1)
            #expect(try tracker.collectWritten(in: target.range, refresh: false).isEmpty)
        }
    }

    @Test func successiveRoundsReportOnlyTheirOwnWrites() throws {
        try withTrackedTarget(pages: 32) { target, tracker in
            for round in [[1, 2, 3], [3, 30], [], [0, 31], Array(0..<32)] {
                try target.write(pages: round)
                let written = try tracker.collectWritten(in: target.range)
                #expect(pageIndexes(written, in: target) == round)
            }
        }
    }

    /// The default range (all writable private mappings) works too: the probe pages are
    /// among the results, and a rescan without activity finds nothing there.
    @Test func wholeAddressSpaceScan() throws {
        try withTrackedTarget(pages: 16) { target, tracker in
            _ = try tracker.collectWritten()  // clears whatever the child touched meanwhile
            try target.write(pages: [4, 9])
            let written = try tracker.collectWritten()
            let inBlock = written.compactMap { r -> PageRegion? in
                let s = max(r.start, target.range.lowerBound), e = min(r.end, target.range.upperBound)
                return s < e ? PageRegion(start: s, end: e, categories: r.categories) : nil
            }
            #expect(pageIndexes(inBlock, in: target) == [4, 9])
            #expect(tracker.lastRegistration.refused.isEmpty, "\(tracker.lastRegistration.refused)")
        }
    }

    /// Marker-free: protecting scans must not leave uffd-wp markers on never-touched
    /// pages (they show up as SWAPPED; this machine has no swap).
    @Test func protectionLeavesNoMarkers() throws {
        try withTrackedTarget(pages: 16) { target, tracker in
            _ = try tracker.collectWritten()
            let maps = try ProcessMaps.read(pid: target.pid).filter(\.isWritablePrivate)
            let span = maps.first!.start..<maps.last!.end
            let swapped = try tracker.scanner.scan(span, .init(categoryMask: .swapped, returnMask: .swapped))
            #expect(swapped.isEmpty, "\(swapped.prefix(3))")
        }
    }

    /// A dropped page (empty pte) is not "written" and gets no marker; when the program
    /// touches it again the fresh page is reported. Vanished pages must be found by
    /// comparing resident sets, which the resident query provides.
    @Test func droppedPagesVanishAndRefaultedPagesAreReported() throws {
        try withTrackedTarget(pages: 16) { target, tracker in
            try target.drop(page: 3)
            try target.drop(page: 7)
            #expect(try tracker.collectWritten(in: target.range).isEmpty)
            let resident = try tracker.scanner.scan(target.range, .resident)
            #expect(pageIndexes(resident, in: target) == Array(0..<16).filter { $0 != 3 && $0 != 7 })
            #expect(try tracker.scanner.scan(target.range, .init(categoryMask: .swapped)).isEmpty, "no markers")
            try target.write(page: 3)
            #expect(pageIndexes(try tracker.collectWritten(in: target.range), in: target) == [3])
            let bytes = try ProcessMemoryReader(pid: target.pid).read(at: target.address(ofPage: 3), count: 16)
            #expect(bytes == [1] + [UInt8](repeating: 0, count: 15), "fresh zero page, marker gone")
        }
    }

    @Test func registrationMakesMappingsTrackedAndIsIdempotent() throws {
        let target = try ProbeTarget(pages: 8)
        defer { target.terminate() }
        let scanner = try PagemapScanner(pid: target.pid)
        #expect(try scanner.scan(target.range, .untracked).count == 1, "untracked before registration")
        let uffd = try RemoteUserfaultfd(pid: target.pid)
        defer { uffd.close() }
        #expect(uffd.supportedFeatures.contains(.wpAsync))
        let first = try uffd.registerWritablePrivateMappings(scanner: scanner)
        #expect(first.registered.contains { $0.range.contains(target.base) })
        #expect(first.refused.isEmpty, "\(first.refused)")
        #expect(try scanner.scan(target.range, .untracked).isEmpty)
        let categories = try scanner.scan(target.range, .resident).first?.categories
        #expect(categories != nil)
        let second = try uffd.registerWritablePrivateMappings(scanner: scanner)
        #expect(second.registered.isEmpty)
        #expect(second.alreadyTracked == first.registered.count + first.alreadyTracked)
    }

    /// A protecting scan that insists on tracked VMAs fails with EPERM on an untracked one.
    @Test func requireTrackedFailsOnUnregisteredMapping() throws {
        let target = try ProbeTarget(pages: 4)
        defer { target.terminate() }
        let scanner = try PagemapScanner(pid: target.pid)
        do {
            _ = try scanner.collectWritten(in: target.range, requireTracked: true)
            Issue.record("expected EPERM")
        } catch let error as GodwitError {
            #expect(error.errnoCode == EPERM)
            #expect(error.hint != nil)
        }
    }

    /// After the tracker lets go, the kernel drops the registration and the child keeps
    /// running and writing normally.
    @Test func targetRunsOnAfterTrackerCloses() throws {
        let target = try ProbeTarget(pages: 8)
        defer { target.terminate() }
        let tracker = try UffdWriteTracker(pid: target.pid)
        _ = try tracker.collectWritten(in: target.range)
        try target.write(pages: [1, 2])
        #expect(smapsFlags(pid: target.pid, address: target.base).contains("uw"))
        tracker.close()
        #expect(!smapsFlags(pid: target.pid, address: target.base).contains("uw"))
        #expect(throws: GodwitError.self) { try tracker.collectWritten() }
        try target.write(first: 0, count: 8)
        #expect(try target.ping() > 0)
        let bytes = try ProcessMemoryReader(pid: target.pid).read(at: target.address(ofPage: 1), count: 1)
        #expect(bytes == [2], "page 1 was written twice")
    }
}

/// VmFlags of the smaps entry containing `address`.
func smapsFlags(pid: pid_t, address: UInt64) -> [String] {
    guard let bytes = HostEnvironment.readBytes("/proc/\(pid)/smaps") else { return [] }
    let text = String(decoding: bytes, as: UTF8.self)
    var inside = false
    for line in text.split(separator: "\n") {
        if let dash = line.firstIndex(of: "-"), let space = line.firstIndex(of: " "), dash < space,
           let s = UInt64(line[..<dash], radix: 16), let e = UInt64(line[line.index(after: dash)..<space], radix: 16) {
            inside = (s..<e).contains(address)
        } else if inside, line.hasPrefix("VmFlags:") {
            return line.dropFirst("VmFlags:".count).split(separator: " ").map(String.init)
        }
    }
    return []
}
