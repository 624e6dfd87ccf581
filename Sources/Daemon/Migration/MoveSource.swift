import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
import Migration
import NIOHTTP1
import Trust

/// The source's side of `godwit move`: plan with the destination, sync the filesystem
/// while running, [pre-copy, hybrid: rounds of dirty pages into the destination's page
/// store through the "precopy" channel], lazy-dump (CRIU freezes the container and keeps it frozen while its page
/// server serves the memory), final sync, images, the page channel, restore there, then
/// THE COMMIT: the source's tasks are doomed (SIGKILL while frozen) before the destination
/// may run them. Any failure before the commit rolls back: the page session fails, CRIU
/// resumes the source, the destination removes everything it had.
final class MoveSource: @unchecked Sendable {
    let service: MigrationService
    let context: DaemonContext
    let trust: TrustLayer
    let driver: any MigrationDriver
    let record: ContainerRecord
    let request: MoveRequest
    let handle: OperationHandle
    let startedAt = Date()
    private let t0 = DispatchTime.now().uptimeNanoseconds
    private var phases: [MovePhase] = []
    private var phase = "negotiation"

    init(service: MigrationService, context: DaemonContext, trust: TrustLayer, driver: any MigrationDriver,
         record: ContainerRecord, request: MoveRequest, handle: OperationHandle) {
        self.service = service; self.context = context; self.trust = trust; self.driver = driver
        self.record = record; self.request = request; self.handle = handle
    }

    var newName: String { request.newName ?? record.name }
    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
    private func millis(since t: UInt64) -> Double { Double(Self.now() - t) / 1e6 }

    /// Runs `body` as the named phase, timing it and counting `bytes` it reports.
    private func step<T>(_ name: String, _ body: () async throws -> (T, UInt64)) async throws -> T {
        phase = name
        handle.progress(name)
        let t = Self.now()
        let (value, bytes) = try await body()
        phases.append(MovePhase(name: name, millis: millis(since: t), bytes: bytes))
        return value
    }

    func run() async throws -> MoveReport {
        let peer = try trust.client(for: request.target)
        defer { Task { try? await peer.shutdown() } }
        var report = MoveReport(container: record.name, newName: newName, source: context.options.hostName,
                                destination: request.target, mode: request.mode, modeReason: "", outcome: "moved",
                                startedAt: startedAt, totalMillis: 0)
        var migrationID: String?
        var dump: LazyDump?
        var relay: PageServerRelay?
        var source: MigrationSourceSide?
        var committed = false
        var tracker: ContainerDirtyTracker?
        var precopyFD: Int32 = -1
        var push: PushSender?
        var finalSync: Task<SyncStats, Error>?
        var memory = MoveMemoryFigures()
        defer {
            tracker?.close()
            if precopyFD >= 0 { close(precopyFD) }
        }
        do {
            // 1. Plan from both hosts' own checks and the container's keys and size.
            guard let initProcess = record.initProcess else { throw ContainerService.noProcess(record.name) }
            let side = try driver.migrationSource(context.containers.spec(record), init: initProcess)
            source = side
            let config = ContainerConfig(record.config)
            let (mode, reason) = try await step("negotiation") { () -> ((MoveMode, String), UInt64) in
                let theirs: PeerCapabilities = try await peer.call(.GET, "/1.0/migrations/check")
                let container = MovePlanner.Container(memoryBytes: Self.anonymousMemory(side.cgroup), config: config)
                return (try MovePlanner.plan(requested: request.mode, source: try service.capabilities(), destination: theirs,
                                             container: container), 0)
            }
            report.mode = mode
            report.modeReason = reason
            report.destination = peer.remote.name
            let answer: IncomingMigrationAnswer = try await peer.call(.POST, "/1.0/migrations", body: IncomingMigrationRequest(
                name: newName, image: record.image, imageFingerprint: record.imageFingerprint, config: record.config,
                ipv4: record.ipv4, mac: record.mac, mode: mode, sourceHost: context.options.hostName,
                criuVersion: try service.capabilities().criuVersion))
            migrationID = answer.id
            let open = { [trust] (channel: String) throws -> Int32 in
                try PeerStream.openBlocking(remote: peer.remote, identity: trust.identity, port: answer.streamPort,
                                            header: PeerStreamHeader(migration: answer.id, secret: answer.secret, channel: channel))
            }
            let spawnHelper = GodwitPaths.sibling("godwit-spawn")

            // 2. Filesystem, while the container runs.
            try await step("filesystem sync") {
                let stats = try await blocking { try FilesystemSync.push(from: side.syncDirectory, channel: { try open("rsync") }, spawnHelper: spawnHelper) }
                return ((), UInt64(max(0, stats.bytesSent)))
            }

            // 2b. Pre-copy rounds while the container runs, into the destination's page store.
            var rounds = 0
            var precopyWriter: PageRecordWriter?
            if mode.preCopies {
                let kind = ContainerDirtyTracker.kind(hostChoice: try service.hostTracker(), forced: config.forcedTracker)
                let t = ContainerDirtyTracker.forCgroup(side.cgroup, kind: kind)
                tracker = t
                memory.tracker = kind.rawValue
                // Asking for pre-copy is asking for rounds, whatever migration.incremental.memory says.
                let settings = { var s = ConvergenceSettings(config: config); s.enabled = true; return s }()
                let fd = try await blocking { try open("precopy") }
                precopyFD = fd
                let writer = PageRecordWriter(sink: FileDescriptorStream(fd: fd, owns: false))
                precopyWriter = writer
                let handle = self.handle
                let pre = try await step("pre-copy (\(kind.rawValue))") { () -> (PreCopyReport, UInt64) in
                    let done = try await blocking { () throws -> PreCopyReport in
                        let session = PreCopySession(tracker: t, sender: PreCopySender(writer: writer), settings: settings,
                                                     throttle: settings.autoConverge ? try? CPUThrottle(cgroup: side.cgroup) : nil,
                                                     progress: { handle.progress("pre-copy: " + $0) })
                        return try session.run()
                    }
                    return (done, done.totalBytes)
                }
                rounds = pre.rounds.count
                memory.finalReason = pre.finalReason
                report.rounds = pre.rounds.map { r in
                    MoveRound(round: r.round, dirtyPages: r.dirtyPages, residentPages: r.residentPages, dataPages: r.dataPages,
                              zeroPages: r.zeroPages, bytes: r.bytesSent, millis: Double(r.copyNanos) / 1e6,
                              dirtyPagesPerSecond: r.dirtyPagesPerSecond, predictedPauseMillis: r.predictedPauseSeconds.map { $0 * 1000 },
                              throttlePercent: r.throttlePercent, decision: r.decision)
                }
            }

            // 3. Freeze: CRIU's lazy dump; from here the container is frozen.
            let images = context.options.stateDir.appendingPathComponent("containers/\(record.name)/move-images").path
            try? FileManager.default.removeItem(atPath: images)
            let freezeAt = Self.now()
            let lazy = try await step("checkpoint") { () -> (LazyDump, UInt64) in
                var options = DumpOptions(pid: side.initPID, imagesDirectory: images)
                options.freezerCgroup = side.cgroup.directory(for: "freezer")
                options.lazyPages = PageServerAddress(address: "127.0.0.1", port: try PageServerClient.freePort())
                let d = try LazyDump(criu: side.criu, options: options)
                dump = d
                // Files can't change once every task is frozen: the last filesystem sync
                // runs while CRIU is still dumping, instead of adding to the freeze after it.
                finalSync = Task {
                    try await blocking { () throws -> SyncStats in
                        guard poll(timeout: 60, { Self.heldStill(side.cgroup) || !d.isRunning }), d.isRunning else {
                            throw GodwitError("CRIU's dump ended before the container was frozen")
                        }
                        return try FilesystemSync.push(from: side.syncDirectory, channel: { try open("rsync") }, spawnHelper: spawnHelper)
                    }
                }
                try await blocking { try d.waitUntilServing() }
                return (d, 0)
            }
            // 3b. Pre-copy: the final scan (race-free: CRIU holds the tasks frozen) tells the
            //     destination which stored pages changed since they were sent.
            //     Pre-copy sends their contents right behind it as one stream (read from the
            //     held tasks, so exact): fetching them one request at a time through CRIU's
            //     page server cost ~0.2 ms a page in the freeze. Hybrid sends only the
            //     invalidations here and pushes the pages in the background (the container
            //     runs meanwhile and faults on what is not there yet).
            if let t = tracker, let writer = precopyWriter {
                let fd = precopyFD
                let finalRound = rounds + 1
                let withPages = mode != .hybrid
                let (scan, sent) = try await step(withPages ? "final scan + dirty pages" : "final scan") { () -> ((DirtyScan, RoundStats), UInt64) in
                    try await blocking { () throws -> ((DirtyScan, RoundStats), UInt64) in
                        let scan = try t.scan(attachNew: false)
                        // Marker-free protection: CRIU dumped no phantom pages; let go now.
                        t.close()
                        let sender = PreCopySender(writer: writer)
                        let sent = withPages ? try sender.sendRound(scan, round: finalRound, tracker: nil)
                                             : try sender.sendInvalidations(scan, round: finalRound)
                        shutdown(fd, Int32(SHUT_WR))
                        return ((scan, sent), sent.bytesSent)
                    }
                }
                memory.finalDirtyPages = scan.dirtyPages
                if withPages { memory.pagesPushed = sent.dataPages + sent.zeroPages }
                handle.progress("final scan: \(scan.dirtyPages) pages dirty since the last round")
                if mode == .hybrid {
                    let fd = try await blocking { try open("push") }
                    push = PushSender(scan: scan, round: rounds + 2, fd: fd)
                }
            }
            // What is left of it, if anything (the phase's time is only the wait for it).
            try await step("final filesystem sync") {
                let stats = try await finalSync!.value
                return ((), UInt64(max(0, stats.bytesSent)))
            }
            try await step("images") {
                let bytes = try await blocking { () throws -> UInt64 in
                    let fd = try open("images")
                    defer { close(fd) }
                    let sent = try ImageTransfer.send(directory: images, to: fd) { $0.hasSuffix(".log") }
                    shutdown(fd, Int32(SHUT_WR))
                    return sent
                }
                return ((), bytes)
            }
            // 4. Memory: the destination fetches through the page channel (all of it now
            //    in stop-and-copy; on fault and in the background in post-copy).
            let pageChannel = try await blocking { try open("pages") }
            let r = try PageServerRelay(channel: pageChannel, pageServer: lazy.options.lazyPages!)
            relay = r
            let restored: IncomingMigrationStatus = try await step(mode.restoresLazily ? "restore (lazy)" : "memory + restore") {
                let status: IncomingMigrationStatus = try await peer.call(.POST, "/1.0/migrations/\(answer.id)/restore")
                return (status, mode.restoresLazily ? 0 : r.bytesToDestination)
            }
            memory.lazyPages = restored.lazyPages
            if !mode.restoresLazily {
                phases.append(MovePhase(name: "destination: fetch", millis: restored.fetchMillis))
                phases.append(MovePhase(name: "destination: rebuild", millis: restored.rebuildMillis))
                memory.pagesFetched = restored.pagesFetched
                memory.pagesFromStore = restored.pagesFromStore
            }
            phases.append(MovePhase(name: "destination: criu restore", millis: restored.restoreMillis))

            // 5. THE COMMIT. Doomed first, then the destination runs.
            phase = "commit"
            committed = true
            _ = try SourceTermination.killAll(cgroup: side.cgroup)
            let t = Self.now()
            _ = try await peer.call(.POST, "/1.0/migrations/\(answer.id)/commit") as IncomingMigrationStatus
            phases.append(MovePhase(name: "commit", millis: millis(since: t)))
            report.frozenMillis = Double(Self.now() - freezeAt) / 1e6
            handle.progress("running on \(peer.remote.name)")

            // 6. Post-copy, hybrid: the rest of memory streams; done when every page is there.
            if mode.restoresLazily {
                let t = Self.now()
                var status = restored
                while status.phase == "fetching" || status.phase == "restored" {
                    try await Task.sleep(for: .milliseconds(100))
                    handle.progress("pages to \(peer.remote.name)", processedBytes: r.bytesToDestination)
                    status = try await peer.call(.GET, "/1.0/migrations/\(answer.id)")
                }
                phases.append(MovePhase(name: "background page transfer", millis: millis(since: t), bytes: r.bytesToDestination))
                if let push, let pushed = await blocking({ push.wait(timeout: 30) }) {
                    phases.append(MovePhase(name: "background push", millis: Double(pushed.nanos) / 1e6, bytes: pushed.bytes))
                }
                memory.pagesServedLocally = status.pagesServedLocally
                memory.pagesPushed = status.pagesPushed
                memory.pagesFetchedOnFault = status.pagesFetchedOnFault
                memory.pagesFetchedTwice = status.pagesFetchedTwice
                report.memory = memory
                if let lost = status.lost { throw GodwitError("the container was lost after its commit: \(lost)") }
                report.allLocalMillis = status.allLocalAfterCommitMillis.map { $0 + report.frozenMillis! }
            }
            report.memory = memory
            _ = await blocking { _ = r.wait(timeout: 30); return lazy.waitForExit(timeout: 30) }
            try await removeSource(side)
        } catch {
            let reason = (error as? GodwitError)?.message ?? "\(error)"
            report.reason = reason
            report.failedPhase = phase
            if report.memory == nil, memory.tracker != nil { report.memory = memory }
            push?.abort()
            _ = await finalSync?.result  // no rsync may still write while the destination is removed
            if committed {
                report.outcome = "lost"
            } else {
                report.outcome = "rolled-back"
                await rollback(peer: peer, migrationID: migrationID, dump: dump, relay: relay, source: source)
            }
            report.totalMillis = millis(since: t0)
            report.phases = phases
            service.record(report)
            let failure = (error as? GodwitError) ?? GodwitError.wrap(error, doing: "moving \(record.name)")
            throw failure.with("phase", phase).with("outcome", committed
                ? "container lost: its source tasks were killed at the commit; see `godwit info \(newName)` on \(request.target)"
                : "rolled back: \(record.name) runs on \(context.options.hostName)")
        }
        report.totalMillis = millis(since: t0)
        report.phases = phases
        service.record(report)
        _ = try? await peer.call(.POST, "/1.0/migrations/reports", body: report) as [String: String]
        return report
    }

    /// Before the commit, in the order that never leaves two running copies: the destination
    /// removes its copy, then the page session fails (CRIU resumes the source).
    private func rollback(peer: PeerClient, migrationID: String?, dump: LazyDump?, relay: PageServerRelay?,
                          source: MigrationSourceSide?) async {
        handle.progress("rolling back")
        if let migrationID { _ = try? await peer.send(.DELETE, "/1.0/migrations/\(migrationID)", timeout: .seconds(30)) }
        await blocking {
            relay?.abort()
            if let dump {
                if relay == nil, dump.isRunning, let address = dump.options.lazyPages,
                   let probe = try? PageServerClient(host: address.address, port: address.port) {
                    probe.abandon()  // nobody connected yet: fail the session so CRIU resumes
                }
                if dump.waitForExit(timeout: 30) == nil { dump.kill() }
            }
            try? source?.cgroup.thaw()
            if let source { Self.removeLeftoverNetworkLock(initPID: source.initPID) }
        }
    }

    /// CRIU locks the container's network with an nftables table (`--network-lock
    /// nftables`) and should remove it when a dump fails. After a failed restore on the
    /// destination (the whole memory already served), CRIU 4.2.1 was seen to resume the
    /// container with the table still there: every packet dropped. New connections work
    /// again once it is gone; connections established at the freeze did not come back in
    /// that case (see docs/migration.md). Only tables CRIU names CRIU-* are touched.
    static func removeLeftoverNetworkLock(initPID: pid_t) {
        CRIUNetworkLock.removeLeftover(initPID: initPID)
    }

    /// The destination runs the container: the source's copy goes (its tasks are dead).
    private func removeSource(_ side: MigrationSourceSide) async throws {
        let spec = context.containers.spec(record)
        _ = await blocking { poll(timeout: 10) { side.cgroup.processes().isEmpty } }
        try await driver.destroy(spec)
        try? FileManager.default.removeItem(at: spec.directory)
        try context.store.deleteContainer(record.name)
        context.events.lifecycle("container-migrated", container: record.name, context: ["to": request.target])
    }

    /// The container can't change a file any more: its freezer is frozen, or (after CRIU
    /// seized every task and thawed the freezer again) every thread is in a ptrace stop.
    static func heldStill(_ cgroup: Cgroup) -> Bool {
        if cgroup.isFrozen { return true }
        let pids = cgroup.processes()
        guard !pids.isEmpty else { return false }
        for pid in pids {
            guard let threads = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !threads.isEmpty else { return false }
            for tid in threads where HostEnvironment.threadState(pid: pid, tid: tid) != "t" { return false }
        }
        return true
    }

    /// Anonymous memory of the container's cgroup (v1 memory.stat total_rss, v2 anon).
    static func anonymousMemory(_ cgroup: Cgroup) -> UInt64? {
        guard let stat = cgroup.read("memory.stat") else { return nil }
        for line in stat.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == "total_rss" || parts[0] == "anon", let value = UInt64(parts[1]) { return value }
        }
        return nil
    }
}
