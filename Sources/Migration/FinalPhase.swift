import Checkpoint
import Foundation
import GodwitCore
import Memory

/// Where the frozen time of the final phase went, and what moved.
public struct FinalPhaseReport: Sendable, CustomStringConvertible {
    public var finalScanNanos: UInt64 = 0
    /// From starting `criu dump --lazy-pages` to its page server listening (images written).
    public var dumpNanos: UInt64 = 0
    public var imageCopyNanos: UInt64 = 0
    public var fetchNanos: UInt64 = 0
    public var rebuildNanos: UInt64 = 0
    public var restoreNanos: UInt64 = 0
    /// From starting the dump (CRIU freezes first thing) to the restored container
    /// running: the application's pause, slightly overestimated by CRIU's start-up.
    public var frozenNanos: UInt64 = 0
    /// CLOSE to the source's dump exiting (after the destination runs: not downtime).
    public var commitNanos: UInt64 = 0
    /// Allocating the rebuilt images' space before the freeze (not downtime).
    public var stagingNanos: UInt64 = 0
    /// Time spent in the caller's hooks (test snapshots), left out of `frozenNanos`.
    public var hookNanos: UInt64 = 0

    public var finalDirtyPages = 0
    public var lazyPages = 0
    public var pagesFromStore = 0
    /// Lazy pages the page store lacked (dirtied after they were sent, or never sent).
    public var pagesMissing = 0
    /// Pages fetched from the source: the missing ones plus small gaps bridged between them.
    public var pagesFetched = 0
    public var fetchRequests = 0
    public var presentPagesInDump = 0
    public var imageBytes: UInt64 = 0
    public var restoredPID: pid_t = 0
    public var dumpStats: CRIUStats?

    public init() {}

    public var description: String {
        func ms(_ n: UInt64) -> String { String(format: "%.1f ms", Double(n) / 1e6) }
        return """
            frozen \(ms(frozenNanos)): lazy dump \(ms(dumpNanos)) (CRIU start, freeze, images), final scan \(ms(finalScanNanos)) (\(finalDirtyPages) dirty pages), \
            image copy \(ms(imageCopyNanos)) (\(imageBytes) B), \
            fetch \(ms(fetchNanos)) (\(pagesMissing) missing, \(pagesFetched) pages in \(fetchRequests) GETs), rebuild \(ms(rebuildNanos)) \
            (\(pagesFromStore) of \(lazyPages) lazy pages from the page store, \(presentPagesInDump) in the dump), \
            restore \(ms(restoreNanos)); commit \(ms(commitNanos)) after the destination ran; \
            staging \(ms(stagingNanos)) before the freeze\
            \(hookNanos > 0 ? "; caller hooks \(ms(hookNanos)) (not counted)" : "")
            """
    }
}

/// The source container, as the final phase needs it.
public struct FinalPhaseSource {
    public var cgroup: Cgroup
    public var initPID: pid_t
    public var tracker: DirtyTracker
    /// CRIU as the source runs it (the dump needs no special network namespace: its page
    /// server must be reachable from the destination).
    public var criu: CRIU
    public var imagesDirectory: String
    public var pageServerHost = "127.0.0.1"

    public init(cgroup: Cgroup, initPID: pid_t, tracker: DirtyTracker, criu: CRIU, imagesDirectory: String) {
        self.cgroup = cgroup; self.initPID = initPID; self.tracker = tracker; self.criu = criu
        self.imagesDirectory = imagesDirectory
    }
}

/// The destination, as the final phase needs it.
public struct FinalPhaseDestination {
    public var store: PageStore
    /// CRIU as the destination runs it (launcher: the namespace holding its bridge).
    public var criu: CRIU
    public var restore: RestoreOptions
    /// The cgroup the restored container lands in (restore.cgroupRoot), for cleanup.
    public var cgroup: Cgroup

    public init(store: PageStore, criu: CRIU, restore: RestoreOptions, cgroup: Cgroup) {
        self.store = store; self.criu = criu; self.restore = restore; self.cgroup = cgroup
    }
}

/// The safe final phase of pre-copy: CRIU lazy dump on the source (it freezes; it writes
/// non-memory state + lazy pagemaps; tasks stay frozen, pages stay on the source), final
/// dirty scan,
/// then on the destination: copy the small images, take every lazy page from the page
/// store unless the final scan dirtied it (those come from the source's page server),
/// rebuild ordinary images, restore normally, and only once the restored container runs,
/// send CLOSE so the source's dump completes (and kills the source tasks).
///
/// The source is authoritative until CLOSE. Any failure before it: the restored copy (if
/// any) is killed first, then the page-server connection is dropped without CLOSE (CRIU
/// resumes the source), the cgroup is thawed, and the destination's images are removed.
public final class FinalPhase {
    public let source: FinalPhaseSource
    public let destination: FinalPhaseDestination
    /// Called with the restored init's host pid while its tasks are still stopped (when
    /// restore.leaveStopped is set) and before the commit; a throw aborts the move.
    public var afterRestore: ((pid_t) throws -> Void)?
    /// Called while the source is frozen, after the final scan (e.g. to snapshot its memory).
    public var whileFrozen: (() throws -> Void)?
    public let progress: ((String) -> Void)?
    /// Missing runs closer than this are fetched with one GET (1 = never bridge).
    public var fetchBridgePages = 4

    public init(source: FinalPhaseSource, destination: FinalPhaseDestination, progress: ((String) -> Void)? = nil) {
        self.source = source
        self.destination = destination
        self.progress = progress
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    public func run(round: Int) throws -> FinalPhaseReport {
        var report = FinalPhaseReport()
        var dump: LazyDump?
        var client: PageServerClient?
        var restored = false
        let dstImages = destination.restore.imagesDirectory
        // Before the freeze: allocate the rebuilt pages images' space now, so the frozen
        // window doesn't pay for fresh tmpfs pages. Sized from what the store holds, plus
        // slack for what the final dump adds; a wrong guess only costs speed.
        let stagingStart = Self.now()
        for id in destination.store.nsPIDs {
            let pages = UInt64(destination.store.pageCount(nsPID: id))
            try? ImageRebuilder.prepareStaging(directory: dstImages, id: id,
                                               bytes: (pages + pages / 20 + 256) * systemPageSize)
        }
        report.stagingNanos = Self.now() - stagingStart
        let t0 = Self.now()
        do {
            // 1. Lazy dump: CRIU freezes the container through its freezer cgroup, writes
            //    every image but the lazy memory, and keeps the tasks stopped while its
            //    page server listens. CRIU does the freezing (not us) so that a failure,
            //    or Godwit dying, resumes the source fully: CRIU puts the freezer back in
            //    the state it found (THAWED), and our socket closes with a reset (see
            //    PageServerClient), which fails the dump.
            var t = Self.now()
            var options = DumpOptions(pid: source.initPID, imagesDirectory: source.imagesDirectory)
            options.freezerCgroup = source.cgroup.directory(for: "freezer")
            let port = try PageServerClient.freePort(host: source.pageServerHost)
            options.lazyPages = PageServerAddress(address: source.pageServerHost, port: port)
            let lazy = try LazyDump(criu: source.criu, options: options)
            dump = lazy
            try lazy.waitUntilServing()
            report.dumpNanos = Self.now() - t

            // 2. Final scan, race-free now that the tasks are stopped; without attaching
            //    (new processes count as fully dirty). Its answer reaches the destination
            //    as a round of drop records, through the same framing as the pre-copy rounds.
            t = Self.now()
            let scan = try source.tracker.scan(attachNew: false)
            // Protection was marker-free (only present pages), so CRIU dumped no phantom
            // zero pages; the registrations are not needed any more.
            source.tracker.close()
            let stream = MemoryByteStream()
            let invalidations = try PreCopySender(writer: PageRecordWriter(sink: stream)).sendInvalidations(scan, round: round)
            _ = try PreCopyReceiver(reader: PageRecordReader(source: stream), store: destination.store).receiveRound()
            report.finalDirtyPages = scan.dirtyPages
            report.finalScanNanos = Self.now() - t
            let hook = Self.now()
            try whileFrozen?()
            report.hookNanos = Self.now() - hook
            progress?("final scan: \(scan.dirtyPages) pages dirty, \(invalidations.droppedPages) invalidated at the destination")

            // 4. Images to the destination (the transport's job between hosts).
            t = Self.now()
            report.imageBytes = try Self.copyImages(from: source.imagesDirectory, to: dstImages)
            report.imageCopyNanos = Self.now() - t

            // 5. Fetch what the store lacks (dirtied after it was sent, or never sent).
            t = Self.now()
            let connection = try PageServerClient(host: source.pageServerHost, port: port)
            client = connection
            let rebuilder = ImageRebuilder(directory: dstImages)
            let pageSize = systemPageSize
            let plan = try Self.missingPages(rebuilder.lazyEntries(), store: destination.store, bridge: fetchBridgePages)
            report.lazyPages = plan.lazyPages
            report.pagesMissing = plan.missingPages
            let requests = plan.requests
            let store = destination.store
            try connection.fetch(requests) { id, vaddr, pages, bytes in
                try store.store(nsPID: id, vaddr: vaddr, count: pages, data: bytes)
            }
            report.pagesFetched = connection.pagesFetched
            report.fetchRequests = connection.requests
            report.pagesFromStore = report.lazyPages - report.pagesFetched
            report.fetchNanos = Self.now() - t

            // 6. Ordinary images from the dump's non-lazy data + the store.
            t = Self.now()
            let rebuilt = try rebuilder.rebuild { id, vaddr, pages, buffer in
                let held = try store.read(nsPID: id, vaddr: vaddr, count: pages, into: buffer)
                if let gap = held.firstIndex(of: false) {
                    throw GodwitError("page \(id):0x\(String(vaddr + UInt64(gap) * pageSize, radix: 16)) is neither in the page store nor fetched")
                }
            }
            report.presentPagesInDump = rebuilt.presentPages
            ImageRebuilder.removeStaging(directory: dstImages)
            report.rebuildNanos = Self.now() - t

            // 7. Plain restore on the destination.
            t = Self.now()
            let (pid, _) = try destination.criu.restore(destination.restore)
            restored = true
            report.restoredPID = pid
            report.restoreNanos = Self.now() - t
            let restoredAt = Self.now()
            try afterRestore?(pid)
            report.hookNanos += Self.now() - restoredAt
            // CRIU restores the freezer state it found at dump time; should the source have
            // been frozen by someone else, the restored cgroup would come back FROZEN.
            try destination.cgroup.thaw()
            if destination.restore.leaveStopped {
                for task in ContainerProcesses.hostPIDs(cgroupDirectories: destination.cgroup.directories) { kill(task, SIGCONT) }
            }
            guard TrackedProcess.of(hostPID: pid) != nil else {
                throw GodwitError("the restored container's init (pid \(pid)) is not running")
            }
            report.frozenNanos = Self.now() - t0 - report.hookNanos
        } catch {
            rollback(dump: dump, client: client, restored: restored)
            let failure = (error as? GodwitError) ?? GodwitError.wrap(error, doing: "final phase")
            throw failure.with("rolled back", "source resumed")
        }

        // 8. Commit: the destination runs; CLOSE lets the source's dump finish (it kills
        //    the source tasks). From here on the destination is authoritative.
        let t = Self.now()
        do {
            try client?.close()
        } catch {
            progress?("CLOSE to the source's page server failed (\(error)); the destination keeps running")
        }
        if dump?.waitForExit(timeout: 60) != 0 {
            progress?("the source's criu dump did not exit cleanly; see \(dump?.logPath ?? "?")")
        }
        report.commitNanos = Self.now() - t
        // CRIU 4.2.1 writes stats-dump when a lazy dump ends, but with zeros (and a bogus
        // frozen_time): kept for completeness, not used for the figures above.
        if let stats = dump?.stats { report.dumpStats = stats }
        return report
    }

    /// Undo before the commit, in the order that never leaves two running copies: kill
    /// the destination's copy, then drop the connection (CRIU resumes the source), then
    /// make sure the source is thawed.
    private func rollback(dump: LazyDump?, client: PageServerClient?, restored: Bool) {
        if restored || destination.cgroup.exists {
            try? destination.cgroup.kill()
            try? destination.cgroup.remove()
        }
        client?.abandon()
        if let dump {
            if dump.isRunning, client == nil {
                // Nobody connected yet: connect and abort, so CRIU fails and resumes.
                if let port = dump.options.lazyPages?.port,
                   let probe = try? PageServerClient(host: source.pageServerHost, port: port) { probe.abandon() }
            }
            if dump.waitForExit(timeout: 30) == nil { dump.kill() }
        }
        try? source.cgroup.thaw()
        // Keep the destination's CRIU log for the post-mortem, next to the source's images.
        let log = destination.restore.imagesDirectory + "/restore.log"
        if FileManager.default.fileExists(atPath: log) {
            try? FileManager.default.removeItem(atPath: source.imagesDirectory + "/destination-restore.log")
            try? FileManager.default.copyItem(atPath: log, toPath: source.imagesDirectory + "/destination-restore.log")
        }
        try? FileManager.default.removeItem(atPath: destination.restore.imagesDirectory)
        progress?("final phase rolled back: the source container runs on")
    }

    /// What to fetch from the frozen source: for each lazy pagemap entry, the runs of pages
    /// `store` lacks (dirtied after they were sent, or never sent). Runs less than `bridge`
    /// pages apart are fetched as one GET (the pages between are re-sent by the frozen
    /// source: harmless, and at 1 Gbit/s 3 pages cost about one round trip). Never across
    /// entries: the source only serves addresses inside its lazy entries. An empty store
    /// asks for everything (stop-and-copy). Shared by the local final phase and moves.
    public static func missingPages(_ lazyEntries: [(id: Int32, entries: [PagemapEntry])], store: PageStore, bridge: Int)
        -> (requests: [PageServerClient.Request], lazyPages: Int, missingPages: Int)
    {
        let pageSize = systemPageSize
        var requests: [PageServerClient.Request] = []
        var lazyPages = 0, missing = 0
        for (id, entries) in lazyEntries {
            for entry in entries {
                lazyPages += entry.pages
                var runs: [(start: Int, end: Int)] = []
                for i in 0..<entry.pages where !store.contains(nsPID: id, vaddr: entry.vaddr + UInt64(i) * pageSize) {
                    missing += 1
                    if let last = runs.last, i - last.end < bridge {
                        runs[runs.count - 1].end = i + 1
                    } else {
                        runs.append((i, i + 1))
                    }
                }
                for run in runs {
                    requests.append(.init(nsPID: id, vaddr: entry.vaddr + UInt64(run.start) * pageSize, pages: run.end - run.start))
                }
            }
        }
        return (requests, lazyPages, missing)
    }

    /// Copies the files of an images directory (flat); returns the bytes copied.
    static func copyImages(from: String, to: String) throws -> UInt64 {
        let fm = FileManager.default
        try fm.createDirectory(atPath: to, withIntermediateDirectories: true)
        var bytes: UInt64 = 0
        for name in try fm.contentsOfDirectory(atPath: from) where name.hasSuffix(".img") {
            let target = to + "/" + name
            try? fm.removeItem(atPath: target)
            try fm.copyItem(atPath: from + "/" + name, toPath: target)
            bytes += (try fm.attributesOfItem(atPath: target)[.size] as? UInt64) ?? 0
        }
        return bytes
    }
}
