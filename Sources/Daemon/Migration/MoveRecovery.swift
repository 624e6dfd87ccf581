import API
import Foundation
import GodwitCore
import Migration

/// At start-up: moves out of this host that a previous daemon left half-done (it died
/// between the freeze and the end) are finished from their journal, by the engine's
/// `SourceRecovery`: a container the old daemon froze runs again here and the destination
/// drops its copy; one whose tasks were already doomed is this host's no longer (the
/// destination runs it), or reported lost.
enum MoveRecovery {
    static func journalPath(_ context: DaemonContext, _ name: String) -> String {
        context.options.stateDir.appendingPathComponent("containers/\(name)/move-journal.json").path
    }

    /// The journal of a move into this host (see DestinationJournal).
    static func incomingJournalPath(_ context: DaemonContext, _ name: String) -> String {
        context.options.stateDir.appendingPathComponent("containers/\(name)/move-in-journal.json").path
    }

    /// Marks a container restored lazily whose memory is not all here yet.
    static func pagesPendingPath(_ context: DaemonContext, _ name: String) -> String {
        context.options.stateDir.appendingPathComponent("containers/\(name)/pages-pending").path
    }

    /// Before the adoption of containers (which removes half-created ones): moves into
    /// here that reached the restore. Returns the containers to keep although their row
    /// says Creating (restored by copy, held for the source's commit).
    ///
    /// - restored by copy, tasks still there: held, stopped; the source's retried commit
    ///   runs it (its tasks may be doomed already), its abort or silence removes it;
    /// - committing by copy: the source's tasks are doomed, so it runs now;
    /// - lazy, either phase: its page server died with the old daemon, so its tasks would
    ///   read missing pages as zeros: killed and removed; the source learns why.
    static func incoming(_ context: DaemonContext, driver: any MigrationDriver) async -> Set<String> {
        guard let records = try? context.store.containers(), let incoming = try? context.migrations.incoming() else { return [] }
        var keep = Set<String>()
        for record in records {
            let path = incomingJournalPath(context, record.name)
            guard var journal = DestinationJournal.read(path) else { continue }
            let spec = context.containers.spec(record)
            let cgroup = try? driver.migrationCgroup(spec)
            let tasks = cgroup?.processes() ?? []
            let intact = cgroup != nil && tasks.contains(journal.pid)
            // "restored" on disk but the tasks run: the commit ran and the journal's next
            // write failed (a full disk). Held back, they would be abandoned: adopt them.
            if journal.phase == .restored, intact, let cgroup, !cgroup.isFrozen, !tasks.allSatisfy(Self.isStopped) {
                journal.phase = .committing
            }
            let why: String
            if journal.mode.behaviour.restore != .copy {
                why = "the daemon on \(context.options.hostName) restarted during the lazy restore; its page server went with it"
            } else if !intact {
                why = "the daemon on \(context.options.hostName) restarted and the restored tasks are gone"
            } else {
                let restored = DestinationEngine.Restored(method: AdoptedRestore(cgroup: cgroup!, pid: journal.pid), pid: journal.pid)
                do {
                    let engine = try incoming.recover(journal, record: record, state: .restored(restored))
                    keep.insert(record.name)
                    if journal.phase == .committing {
                        _ = try engine.commitIdempotent()
                        context.events.log("warning", "incoming migration \(journal.migrationID) of \(record.name): the daemon restarted during the commit; the container runs here")
                    } else {
                        context.events.log("warning", "incoming migration \(journal.migrationID) of \(record.name): the daemon restarted after the restore; held stopped for \(journal.peerName)'s commit or abort")
                    }
                    continue
                } catch {
                    why = "the daemon on \(context.options.hostName) restarted and could not take the restored container over: \(error)"
                }
            }
            // Not kept running: nothing of it may run.
            if let cgroup { try? cgroup.kill() }
            try? FileManager.default.removeItem(atPath: path)
            try? FileManager.default.removeItem(atPath: pagesPendingPath(context, record.name))
            let outcome: DestinationEngine.Outcome = journal.phase == .committing ? .lost(why) : .rolledBack(why)
            if journal.phase == .committing {
                // This was the only copy: its memory is gone, its files are not. Kept,
                // stopped, so the user can see it and start it again from its files.
                _ = try? context.store.updateContainer(record.name) { $0.status = .stopped; $0.initProcess = nil }
                context.events.log("error", "container \(record.name) is lost: \(why); it was killed rather than run on missing pages")
            } else {
                // Not committed: the source still has it.
                try? await driver.destroy(spec)
                try? FileManager.default.removeItem(at: spec.directory)
                try? context.store.deleteContainer(record.name)
            }
            _ = try? incoming.recover(journal, record: record, state: .finished(outcome))
            context.events.log(journal.phase == .committing ? "error" : "warning", "incoming migration \(journal.migrationID) of \(record.name): \(why)")
            _ = try? context.store.recordMigration(MigrationRecord(
                id: nil, container: record.name, direction: "in", peer: journal.peerName, strategy: journal.mode.rawValue,
                status: outcome.status, startedAt: Date(), finishedAt: Date(), downtimeMilliseconds: nil,
                details: ["recovered": why]))
        }
        return keep
    }

    /// Stopped by a signal or ptrace (CRIU's --leave-stopped), per /proc/PID/stat.
    static func isStopped(_ pid: pid_t) -> Bool {
        let state = HostEnvironment.procStatFields("/proc/\(pid)/stat")?.first
        return state == "T" || state == "t"
    }

    static func run(_ context: DaemonContext, driver: any MigrationDriver) async {
        guard let records = try? context.store.containers() else { return }
        // Moves into here: a container that ran while pages were still on the source lost
        // its page server with the old daemon; the kernel hands it zero pages for whatever
        // is missing. It must not run on: killed, and said so.
        for record in records where FileManager.default.fileExists(atPath: pagesPendingPath(context, record.name)) {
            let spec = context.containers.spec(record)
            if let cgroup = try? driver.migrationCgroup(spec) { try? cgroup.kill() }
            _ = try? context.store.updateContainer(record.name) { $0.status = .stopped; $0.initProcess = nil }
            try? FileManager.default.removeItem(atPath: pagesPendingPath(context, record.name))
            context.events.log("error", "container \(record.name) is lost: the daemon restarted while its memory was still arriving from its source; it was killed rather than run on missing pages")
            _ = try? context.store.recordMigration(MigrationRecord(
                id: nil, container: record.name, direction: "in", peer: "", strategy: "", status: "lost",
                startedAt: Date(), finishedAt: Date(), downtimeMilliseconds: nil,
                details: ["recovered": "the daemon restarted while pages were still arriving"]))
        }
        for record in records {
            let path = journalPath(context, record.name)
            guard let entry = SourceJournal.read(path) else { continue }
            let outcome = await recover(entry, record: record, context: context, driver: driver)
            try? FileManager.default.removeItem(atPath: path)
            let word: String
            switch outcome {
            case .rolledBack:
                word = "rolled-back"
                context.events.log("warning", "move of \(record.name) to \(entry.peer) was interrupted by a daemon restart: rolled back, it runs here")
            case .moved:
                word = "moved"
                await removeMovedContainer(record, context: context, driver: driver, peer: entry.peer)
            case .lost(let why):
                word = "lost"
                context.events.log("error", "move of \(record.name) to \(entry.peer) was interrupted by a daemon restart: the container is lost: \(why)")
                _ = try? context.store.updateContainer(record.name) { $0.status = .stopped; $0.initProcess = nil }
            }
            _ = try? context.store.recordMigration(MigrationRecord(
                id: nil, container: record.name, direction: "out", peer: entry.peer, strategy: "", status: word,
                startedAt: Date(), finishedAt: Date(), downtimeMilliseconds: nil,
                details: ["recovered": "the daemon restarted in the \(entry.phase.rawValue) phase"]))
        }
    }

    private static func recover(_ entry: SourceJournal, record: ContainerRecord, context: DaemonContext,
                                driver: any MigrationDriver) async -> SourceRecovery.Outcome {
        let spec = context.containers.spec(record)
        guard let cgroup = try? driver.migrationCgroup(spec) else {
            return entry.phase == .doomed ? .lost("the container's cgroup is gone") : .rolledBack
        }
        // No migration on the destination yet (negotiation): nothing to ask it.
        let client = entry.migrationID.isEmpty ? nil : try? context.trust?.client(for: entry.peer)
        defer { if let client { Task { try? await client.shutdown() } } }
        let id = entry.migrationID
        let destination = SourceRecovery.Destination(
            status: {
                let status: IncomingMigrationStatus? = try? await client?.call(.GET, "/1.0/migrations/\(id)")
                return status?.phase
            },
            commit: {
                let status: IncomingMigrationStatus? = try? await client?.call(.POST, "/1.0/migrations/\(id)/commit")
                return status?.phase
            },
            abort: { _ = try? await client?.send(.DELETE, "/1.0/migrations/\(id)", timeout: .seconds(30)) },
            sourceLost: { _ = try? await client?.send(.POST, "/1.0/migrations/\(id)/source-lost", timeout: .seconds(30)) })
        return await SourceRecovery.recover(entry, cgroup: cgroup, destination: destination)
    }

    private static func removeMovedContainer(_ record: ContainerRecord, context: DaemonContext, driver: any MigrationDriver,
                                             peer: String) async {
        let spec = context.containers.spec(record)
        try? await driver.destroy(spec)
        try? FileManager.default.removeItem(at: spec.directory)
        try? context.store.deleteContainer(record.name)
        context.events.lifecycle("container-migrated", container: record.name, context: ["to": peer])
    }
}
