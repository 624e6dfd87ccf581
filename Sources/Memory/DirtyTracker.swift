import Foundation
import GodwitCore

/// What one round's scan found for one process.
public struct ProcessDirtyReport: Sendable {
    public var process: TrackedProcess
    /// nil: not tracked (first seen while the container was frozen, when ptrace can't
    /// attach): every resident page counts as dirty.
    public var tracker: DirtyTrackerKind?
    /// First seen in this scan: the destination forgets whatever it holds under this
    /// ns-pid before storing (a reused ns-pid must not inherit old pages).
    public var isNew: Bool
    /// Pages to (re)send: written since the last scan, newly resident, or in a mapping
    /// that changed (moved, split, replaced).
    public var dirty: PageRanges
    /// Pages that were resident at the last scan and are not now (munmap, MADV_DONTNEED,
    /// swapped out is still resident): the destination drops them.
    public var dropped: PageRanges
    /// Resident pages of the writable private mappings now.
    public var resident: PageRanges
    /// Why this process uses another tracker than the container's preferred one.
    public var fallbackReason: String?
    /// The scan left `dirty` unprotected: the copier must call
    /// `DirtyTracker.protectBeforeCopy` on each range right before reading it.
    public var protectionDeferred = false
}

/// One scan of a whole container.
public struct DirtyScan: Sendable {
    public var round: Int
    public var processes: [ProcessDirtyReport]
    /// Tracked at the previous scan, gone now: the destination drops all their pages.
    public var exited: [TrackedProcess]
    public var scanNanos: UInt64
    public var dirtyPages: Int { processes.reduce(0) { $0 + $1.dirty.pageCount } }
    public var residentPages: Int { processes.reduce(0) { $0 + $1.resident.pageCount } }
    public var droppedPages: Int { processes.reduce(0) { $0 + $1.dropped.pageCount } }
}

/// Dirty tracking for a whole container (a set of processes that changes over time).
/// Round protocol: `scan()`, then copy what it reported, then `noteCopied` per page copied.
/// With `deferProtection`, processes whose tracker can (uffd-wp) are reported with
/// `protectionDeferred`, and the copier protects each range right before reading it.
public protocol DirtyTracker: AnyObject {
    /// The kind the container was planned with (some processes may have fallen back).
    var preferredKind: DirtyTrackerKind { get }
    /// `attachNew: false` while the container is frozen: ptrace can't stop a frozen task,
    /// so new processes are reported untracked (fully dirty) instead of attached.
    func scan(attachNew: Bool, deferProtection: Bool) throws -> DirtyScan
    /// Re-arms write detection for `range` of `process` (a report with
    /// `protectionDeferred`); call right before reading `range`.
    func protectBeforeCopy(process: TrackedProcess, range: Range<UInt64>) throws
    func noteCopied(process: TrackedProcess, address: UInt64, page: UnsafeRawBufferPointer)
    /// Lets go of every process. They run on unaffected; the kernel drops uffd
    /// registrations when the descriptor closes (also if Godwit dies).
    func close()
}

/// The DirtyTracker over a container's cgroup: attaches one ProcessWriteTracker per
/// process (forks included, each round), forgets exited ones, and adds what one process's
/// tracker can't see: pages that left the resident set, and mappings that changed
/// identity (mremap, munmap+mmap at the same place) whose pages are treated as fully dirty.
public final class ContainerDirtyTracker: DirtyTracker {
    public typealias TrackerFactory = (pid_t, DirtyTrackerKind) throws -> ProcessWriteTracker

    public let preferredKind: DirtyTrackerKind
    private let listProcesses: () -> [TrackedProcess]
    private let makeTracker: TrackerFactory
    /// Runs its argument with the container frozen (needed by soft-dirty's read+clear).
    private let whileFrozen: ((() throws -> Void) throws -> Void)?
    private var states: [pid_t: ProcessState] = [:]
    public private(set) var rounds = 0

    final class ProcessState {
        let process: TrackedProcess
        var tracker: ProcessWriteTracker?
        var fallbackReason: String?
        var mappings: [MemoryMapping] = []
        var resident = PageRanges()
        var lastDirty = PageRanges()
        var lastDropped = PageRanges()
        var seen = false
        var scanner: PagemapScanner?
        var reader: PagemapReader?
        init(process: TrackedProcess) { self.process = process }

        func residentPages(in tracked: PageRanges) throws -> PageRanges {
            guard let first = tracked.ranges.first, let last = tracked.ranges.last else { return PageRanges() }
            if scanner == nil && reader == nil {
                scanner = try? PagemapScanner(pid: process.hostPID)
            }
            if let scanner {
                do {
                    let regions = try scanner.scan(first.lowerBound..<last.upperBound, .resident)
                    return PageRanges(regions.map(\.range)).intersection(tracked)
                } catch let error as GodwitError where error.errnoCode == ENOTTY {
                    self.scanner = nil  // kernel < 6.7: raw pagemap from now on
                }
            }
            if reader == nil { reader = try PagemapReader(pid: process.hostPID) }
            return try reader!.resident(in: tracked)
        }
    }

    public init(kind: DirtyTrackerKind, listProcesses: @escaping () -> [TrackedProcess],
                makeTracker: @escaping TrackerFactory = ContainerDirtyTracker.defaultFactory,
                whileFrozen: ((() throws -> Void) throws -> Void)? = nil) {
        preferredKind = kind
        self.listProcesses = listProcesses
        self.makeTracker = makeTracker
        self.whileFrozen = whileFrozen
    }

    /// The tracker for a container's cgroup; soft-dirty scans freeze it briefly.
    public static func forCgroup(_ cgroup: Cgroup, kind: DirtyTrackerKind) -> ContainerDirtyTracker {
        ContainerDirtyTracker(kind: kind, listProcesses: { ContainerProcesses.list(cgroup: cgroup) },
                              whileFrozen: { body in
                                  try cgroup.freeze()
                                  defer { try? cgroup.thaw() }
                                  try body()
                              })
    }

    public static func defaultFactory(pid: pid_t, kind: DirtyTrackerKind) throws -> ProcessWriteTracker {
        switch kind {
        case .uffdWP: return try UffdProcessTracker(pid: pid)
        case .softDirty: return try SoftDirtyProcessTracker(pid: pid)
        case .hashing: return try HashingProcessTracker(pid: pid)
        }
    }

    /// Which processes are tracked how (for reports).
    public var trackerKinds: [TrackedProcess: DirtyTrackerKind?] {
        Dictionary(uniqueKeysWithValues: states.values.map { ($0.process, $0.tracker?.kind) })
    }

    public func scan(attachNew: Bool = true, deferProtection: Bool = false) throws -> DirtyScan {
        let started = DispatchTime.now().uptimeNanoseconds
        rounds += 1
        let current = listProcesses()
        let currentKeys = Set(current.map(\.hostPID))
        var exited: [TrackedProcess] = []
        for (pid, state) in states where !currentKeys.contains(pid) || !current.contains(state.process) {
            exited.append(state.process)
            state.tracker?.close()
            states[pid] = nil
        }
        // Pass 1: attach to new processes (ptrace needs them running, so never while frozen).
        var fresh = Set<pid_t>()
        for process in current where states[process.hostPID] == nil {
            let state = ProcessState(process: process)
            if attachNew {
                do {
                    state.tracker = try makeTracker(process.hostPID, preferredKind)
                } catch {
                    // seccomp blocking userfaultfd (EPERM), a kernel without a feature, or a
                    // soft-dirty clear refused: hash this one process instead.
                    state.fallbackReason = "\(preferredKind.rawValue) failed: \((error as? GodwitError)?.message ?? "\(error)")"
                    if preferredKind != .hashing, let fallback = try? makeTracker(process.hostPID, .hashing) {
                        state.tracker = fallback
                    }
                }
            }
            states[process.hostPID] = state
            fresh.insert(process.hostPID)
        }
        // Pass 2: collect. Soft-dirty processes are collected inside one container freeze.
        var reports: [ProcessDirtyReport] = []
        let order = current.map(\.hostPID).filter { states[$0] != nil }
        let quiet = order.filter { states[$0]?.tracker?.needsQuiescentScan == true }
        var collected: [pid_t: Result<PageRanges, Error>] = [:]
        func collectQuiet() throws {
            for pid in quiet { collected[pid] = Result { try collectOne(states[pid]!, deferProtection: deferProtection) } }
        }
        if !quiet.isEmpty {
            if attachNew, let whileFrozen { try whileFrozen(collectQuiet) } else { try collectQuiet() }
        }
        for pid in order {
            guard let state = states[pid] else { continue }
            let result = collected[pid] ?? Result { try collectOne(state, deferProtection: deferProtection) }
            switch result {
            case .success:
                reports.append(ProcessDirtyReport(
                    process: state.process, tracker: state.tracker?.kind, isNew: fresh.contains(pid),
                    dirty: state.lastDirty, dropped: state.lastDropped, resident: state.resident,
                    fallbackReason: state.fallbackReason,
                    protectionDeferred: deferProtection && state.tracker?.canProtectPerChunk == true))
            case .failure(let error):
                // Gone between listing and scanning: report it exited.
                guard TrackedProcess.of(hostPID: pid) == nil else { throw error }
                exited.append(state.process)
                state.tracker?.close()
                states[pid] = nil
            }
        }
        return DirtyScan(round: rounds, processes: reports, exited: exited,
                         scanNanos: DispatchTime.now().uptimeNanoseconds - started)
    }

    private func collectOne(_ state: ProcessState, deferProtection: Bool) throws -> PageRanges {
        let mappings = try ProcessMaps.read(pid: state.process.hostPID).filter(\.isWritablePrivate)
        let tracked = PageRanges(mappings.map(\.range))
        // Scan (and re-protect) before anything else is read: see ProcessWriteTracker.
        var dirty: PageRanges
        if let tracker = state.tracker {
            dirty = try tracker.collect(in: tracked, deferProtection: deferProtection)
        } else {
            dirty = try state.residentPages(in: tracked)
        }
        let resident = try state.residentPages(in: tracked)
        if state.seen {
            let changed = Self.changedRanges(old: state.mappings, new: mappings)
            dirty = dirty.union(changed.intersection(resident))
        } else {
            dirty = dirty.union(resident)
        }
        state.lastDropped = state.resident.subtracting(resident)
        state.lastDirty = dirty
        state.mappings = mappings
        state.resident = resident
        state.seen = true
        return dirty
    }

    /// Parts of `new` mappings whose pages may not be the pages that were at the same
    /// addresses before: no old mapping covers them with the same permissions, file, and
    /// file-offset-to-address relation. Growth in place (brk) keeps the old part; a move
    /// (mremap), a replacement (munmap + mmap) or an anonymous split is "changed", which is
    /// conservative (resends pages) but never stale.
    public static func changedRanges(old: [MemoryMapping], new: [MemoryMapping]) -> PageRanges {
        var changed: [Range<UInt64>] = []
        var j = 0
        for n in new {
            while j < old.count, old[j].end <= n.start { j += 1 }
            var covered: [Range<UInt64>] = []
            var k = j
            while k < old.count, old[k].start < n.end {
                let o = old[k]
                if o.permissions == n.permissions, o.inode == n.inode, o.path == n.path,
                   o.offset &- o.start == n.offset &- n.start {
                    covered.append(max(o.start, n.start)..<min(o.end, n.end))
                }
                k += 1
            }
            changed += PageRanges([n.range]).subtracting(PageRanges(covered)).ranges
        }
        return PageRanges(changed)
    }

    public func protectBeforeCopy(process: TrackedProcess, range: Range<UInt64>) throws {
        guard let state = states[process.hostPID], state.process == process else { return }
        try state.tracker?.protectBeforeCopy(range)
    }

    public func noteCopied(process: TrackedProcess, address: UInt64, page: UnsafeRawBufferPointer) {
        states[process.hostPID]?.tracker?.noteCopied(address: address, page: page)
    }

    public func close() {
        for state in states.values { state.tracker?.close() }
        states = [:]
    }

    deinit { close() }
}
