import API
import Foundation
import GodwitCore
import Migration
import Runtime
import Trust

/// The daemon's side of `godwit move` on the source host: it gives the engine this host
/// (the container's runtime handles) and the peer (HTTPS + streams), turns the engine's
/// progress into the operation's, and keeps the records: the report in the history, the
/// container's row removed once it lives on the destination.
struct MoveSource {
    let service: MigrationService
    let context: DaemonContext
    let trust: TrustLayer
    let driver: any MigrationDriver
    let record: ContainerRecord
    let request: MoveRequest
    let handle: OperationHandle

    func run() async throws -> MoveReport {
        guard let initProcess = record.initProcess else { throw ContainerService.noProcess(record.name) }
        let spec = context.containers.spec(record)
        let side = try driver.migrationSource(spec, init: initProcess)
        var container = SourceContainer(
            name: record.name, cgroup: side.cgroup, initPID: side.initPID, syncDirectory: side.syncDirectory, criu: side.criu,
            imagesDirectory: context.options.stateDir.appendingPathComponent("containers/\(record.name)/move-images").path,
            spawnHelper: GodwitPaths.sibling("godwit-spawn"), config: ContainerConfig(record.config),
            image: record.image, imageFingerprint: record.imageFingerprint, ipv4: record.ipv4, mac: record.mac)
        // For a destination that lacks the image: this host's copy, and its size for the
        // destination's disk check.
        if let image = try? context.images.image(fingerprint: record.imageFingerprint) {
            container.imageRootfs = context.images.rootfs(image).path
            container.imageBytes = UInt64(max(0, image.sizeBytes))
        }
        let service = self.service
        let host = ContainerSourceHost(hostName: context.options.hostName, container: container,
                                       journalPath: MoveRecovery.journalPath(context, record.name)) {
            (try service.capabilities(), try service.hostTracker())
        }
        let handle = self.handle
        let progress = ProgressReporter { p in
            handle.progress(p.headline, processedBytes: p.bytesDone, totalBytes: p.bytesExpected,
                            bytesPerSecond: p.bytesPerSecond, etaSeconds: p.etaSeconds)
        }
        let client = try trust.client(for: request.target)
        let peer = PeerMigrationTransport(client: client, trust: trust)
        let engine = SourceEngine(host: host, peer: peer, request: request, progress: progress,
                                  hooks: Self.faultHooks(container: record.name))
        let report: MoveReport
        do {
            report = try await engine.run()
            try? await client.shutdown()
        } catch {
            // An HTTP client must be shut down before it goes, whatever the move did.
            try? await client.shutdown()
            if let failed = await engine.failureReport {
                service.record(failed)
                // Lost: the source's tasks were doomed at the commit. The row must not go on
                // saying Running (the fault matrix found it so after every post-copy loss).
                if failed.outcome == "lost" {
                    _ = try? context.store.updateContainer(record.name) { $0.status = .stopped; $0.initProcess = nil }
                }
            }
            throw error
        }
        service.record(report)
        try await removeSource(spec: spec, cgroup: side.cgroup)
        return report
    }

    /// Fault injection for end-to-end tests and `godwit bench faults` (SourceHooks(fault:)):
    /// `GODWIT_FAULT`, or the file named by `GODWIT_FAULT_FILE`, read at each move so one
    /// daemon serves a whole fault matrix. Each point reached is announced on stderr (the
    /// daemon's log), so a harness acts in the pause instead of guessing with sleeps.
    static func faultHooks(container: String) -> SourceHooks {
        let environment = ProcessInfo.processInfo.environment
        var spec = environment["GODWIT_FAULT"]
        if spec == nil, let file = environment["GODWIT_FAULT_FILE"], !file.isEmpty {
            spec = (try? String(contentsOfFile: file, encoding: .utf8)) ?? nil
        }
        var hooks = SourceHooks(fault: spec)
        guard hooks.isSet else { return hooks }
        let what = spec?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
        hooks.onReach = { point in
            FileHandle.standardError.write(Data("godwitd: fault point \(point.rawValue) reached (move of \(container), \(what))\n".utf8))
        }
        return hooks
    }

    /// The destination runs the container: the source's copy goes (its tasks are dead).
    private func removeSource(spec: DriverSpec, cgroup: Cgroup) async throws {
        _ = await blocking { poll(timeout: 10) { cgroup.processes().isEmpty } }
        try await driver.destroy(spec)
        try? FileManager.default.removeItem(at: spec.directory)
        try context.store.deleteContainer(record.name)
        context.events.lifecycle("container-migrated", container: record.name, context: ["to": request.target])
    }
}
