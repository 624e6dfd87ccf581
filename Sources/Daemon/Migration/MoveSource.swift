import API
import Checkpoint
import Foundation
import GodwitCore
import Migration
import NIOHTTP1
import Trust

/// The source's side of `godwit move`: plan with the destination, sync the filesystem
/// while running, lazy-dump (CRIU freezes the container and keeps it frozen while its page
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
        do {
            // 1. Plan from both hosts' own checks.
            let (mode, reason) = try await step("negotiation") { () -> ((MoveMode, String), UInt64) in
                let theirs: PeerCapabilities = try await peer.call(.GET, "/1.0/migrations/check")
                return (try MovePlanner.plan(requested: request.mode, source: try service.capabilities(), destination: theirs), 0)
            }
            report.mode = mode
            report.modeReason = reason
            report.destination = peer.remote.name
            guard let initProcess = record.initProcess else { throw ContainerService.noProcess(record.name) }
            let side = try driver.migrationSource(context.containers.spec(record), init: initProcess)
            source = side
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
                let stats = try await Self.blocking { try FilesystemSync.push(from: side.syncDirectory, channel: { try open("rsync") }, spawnHelper: spawnHelper) }
                return ((), UInt64(max(0, stats.bytesSent)))
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
                try await Self.blocking { try d.waitUntilServing() }
                return (d, 0)
            }
            try await step("final filesystem sync") {
                let stats = try await Self.blocking { try FilesystemSync.push(from: side.syncDirectory, channel: { try open("rsync") }, spawnHelper: spawnHelper) }
                return ((), UInt64(max(0, stats.bytesSent)))
            }
            try await step("images") {
                let bytes = try await Self.blocking { () throws -> UInt64 in
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
            let pageChannel = try await Self.blocking { try open("pages") }
            let r = try PageServerRelay(channel: pageChannel, pageServer: lazy.options.lazyPages!)
            relay = r
            let restored: IncomingMigrationStatus = try await step(mode == .postCopy ? "restore (lazy)" : "memory + restore") {
                let status: IncomingMigrationStatus = try await peer.call(.POST, "/1.0/migrations/\(answer.id)/restore")
                return (status, mode == .postCopy ? 0 : r.bytesToDestination)
            }
            if mode != .postCopy {
                phases.append(MovePhase(name: "destination: fetch", millis: restored.fetchMillis))
                phases.append(MovePhase(name: "destination: rebuild", millis: restored.rebuildMillis))
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

            // 6. Post-copy: the rest of memory streams; done when every page is there.
            if mode == .postCopy {
                let t = Self.now()
                var status = restored
                while status.phase == "fetching" || status.phase == "restored" {
                    try await Task.sleep(for: .milliseconds(100))
                    handle.progress("pages to \(peer.remote.name)", processedBytes: r.bytesToDestination)
                    status = try await peer.call(.GET, "/1.0/migrations/\(answer.id)")
                }
                phases.append(MovePhase(name: "background page transfer", millis: millis(since: t), bytes: r.bytesToDestination))
                if let lost = status.lost { throw GodwitError("the container was lost after its commit: \(lost)") }
                report.allLocalMillis = status.allLocalAfterCommitMillis.map { $0 + report.frozenMillis! }
            }
            _ = await Self.blocking { _ = r.wait(timeout: 30); return lazy.waitForExit(timeout: 30) }
            try await removeSource(side)
        } catch {
            let reason = (error as? GodwitError)?.message ?? "\(error)"
            report.reason = reason
            report.failedPhase = phase
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
        await Self.blocking {
            relay?.abort()
            if let dump {
                if relay == nil, dump.isRunning, let address = dump.options.lazyPages,
                   let probe = try? PageServerClient(host: address.address, port: address.port) {
                    probe.abandon()  // nobody connected yet: fail the session so CRIU resumes
                }
                if dump.waitForExit(timeout: 30) == nil { dump.kill() }
            }
            try? source?.cgroup.thaw()
        }
    }

    /// The destination runs the container: the source's copy goes (its tasks are dead).
    private func removeSource(_ side: MigrationSourceSide) async throws {
        let spec = context.containers.spec(record)
        _ = await Self.blocking { poll(timeout: 10) { side.cgroup.processes().isEmpty } }
        try await driver.destroy(spec)
        try? FileManager.default.removeItem(at: spec.directory)
        try context.store.deleteContainer(record.name)
        context.events.lifecycle("container-migrated", container: record.name, context: ["to": request.target])
    }

    static func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(with: Result { try work() }) }
        }
    }

    static func blocking<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            DispatchQueue.global().async { continuation.resume(returning: work()) }
        }
    }
}
