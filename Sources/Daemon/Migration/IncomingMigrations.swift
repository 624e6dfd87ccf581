import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
import Migration
import Trust

/// One container arriving from a peer: its reserved row, its directory, what arrived on
/// its data channels, and the restore in progress.
final class IncomingMigration: @unchecked Sendable {
    let id: String
    let request: IncomingMigrationRequest
    let peerFingerprint: String
    let peerName: String
    let directory: URL
    let syncDirectory: String
    let startedAt = Date()
    let lock = NSLock()
    /// Channel handlers still running (filesystem sync, image transfer).
    let transfers = DispatchGroup()
    var transferErrors: [String] = []
    var pagesFD: Int32?
    /// Hybrid: the source's push of the final dirty pages (read once the proxy runs).
    var pushFD: Int32?
    /// Pre-copy rounds arrive on their own channel into this store, created at begin for
    /// every mode (empty unless rounds fill it), so restore has one path: fetch or serve
    /// only what the store lacks.
    var store: PageStore?
    var precopyFD: Int32?
    var roundsReceived = 0
    var restore: IncomingRestore?
    var phase = "receiving"
    var finished = false

    init(id: String, request: IncomingMigrationRequest, peerFingerprint: String, peerName: String,
         directory: URL, syncDirectory: String) {
        self.id = id; self.request = request; self.peerFingerprint = peerFingerprint; self.peerName = peerName
        self.directory = directory; self.syncDirectory = syncDirectory
    }

    var imagesDirectory: String { directory.appendingPathComponent("images").path }
    var storeDirectory: String { directory.appendingPathComponent("pages").path }

    func with<T>(_ body: (IncomingMigration) throws -> T) rethrows -> T {
        lock.lock(); defer { lock.unlock() }
        return try body(self)
    }

    func status() -> IncomingMigrationStatus {
        let figures = restore?.figures ?? IncomingFigures()
        return with { m in
            var status = IncomingMigrationStatus(id: m.id, phase: m.phase, pid: m.restore?.restoredPID,
                                                 fetchMillis: figures.fetchMillis, rebuildMillis: figures.rebuildMillis,
                                                 restoreMillis: figures.restoreMillis, pagesFetched: figures.pagesFetched,
                                                 allLocalAfterCommitMillis: figures.allLocalAfterCommitMillis, lost: figures.lost)
            status.roundsReceived = m.roundsReceived
            status.lazyPages = figures.lazyPages
            if m.request.mode.restoresLazily {
                status.pagesServedLocally = figures.pagesServedLocally
                status.pagesPushed = figures.pagesPushed
                status.pagesFetchedOnFault = figures.pagesFetchedOnFault
                status.pagesFetchedTwice = figures.pagesFetchedTwice
                status.pagesRequestedTwice = figures.pagesRequestedTwice
            } else {
                status.pagesFromStore = figures.pagesFromStore
            }
            return status
        }
    }
}

/// The destination's side of moves: what `POST /1.0/migrations` and its follow-ups do, and
/// who may open which data channel. State lives in memory and in the container's row
/// (status Creating until the commit), so a daemon that dies mid-move leaves a Creating
/// row, which the next start removes like any interrupted launch.
public final class IncomingMigrations: @unchecked Sendable {
    let context: DaemonContext
    let trust: TrustLayer
    let driver: any MigrationDriver
    let root: URL
    private let lock = NSLock()
    private var active: [String: IncomingMigration] = [:]
    /// Ended migrations, so the source can still read the final status (newest last).
    private var ended: [IncomingMigration] = []
    private var listener: PeerStreamListener?
    private let listenHost: String
    /// A source that never commits nor aborts (it died) must not leave a half-restored
    /// container forever.
    static let abandonAfter: Duration = .seconds(600)

    init(context: DaemonContext, trust: TrustLayer, driver: any MigrationDriver, listenHost: String) {
        self.context = context; self.trust = trust; self.driver = driver; self.listenHost = listenHost
        root = context.options.stateDir.appendingPathComponent("migrations")
        // Whatever a previous daemon left here belongs to moves that can't resume.
        try? FileManager.default.removeItem(at: root)
    }

    /// The data-channel listener, started on first use (port chosen by the kernel).
    func streamPort() async throws -> Int {
        if let listener = lock.withLock({ self.listener }) { return listener.port }
        let started = try await PeerStreamListener.start(host: listenHost, port: 0, identity: trust.identity,
                                                         trustStore: trust.store) { [weak self] header, fingerprint in
            guard let self else { throw GodwitError("the daemon is shutting down") }
            return try self.authorize(header, peer: fingerprint)
        }
        return lock.withLock {
            if let listener = self.listener { Task { await started.close() }; return listener.port }
            self.listener = started
            return started.port
        }
    }

    func migration(_ id: String) throws -> IncomingMigration {
        guard let migration = lock.withLock({ active[id] ?? ended.last { $0.id == id } }) else {
            throw RequestError.notFound(GodwitError("no incoming migration \(id)", hint: "it ended, or this daemon restarted"))
        }
        return migration
    }

    // MARK: begin

    func begin(_ request: IncomingMigrationRequest, peerFingerprint: String, peerName: String) async throws -> IncomingMigrationAnswer {
        try RequestError.validating { try ContainerName.validate(request.name) }
        let config = try RequestError.validating { try ContainerConfig(validating: request.config) }
        if try context.store.container(request.name) != nil {
            throw RequestError.conflict(GodwitError("a container named '\(request.name)' already exists on \(context.options.hostName)",
                                                    hint: "move it under another name: `godwit move NAME \(context.options.hostName):NEWNAME`"))
        }
        guard try context.images.isKnown(request.image) else {
            throw RequestError.badRequest(GodwitError("image '\(request.image)' is not on \(context.options.hostName)",
                                                      hint: "import the same image there first (`godwit image import`)"))
        }
        let image = try await context.images.resolve(request.image)
        let id = UUID().uuidString.lowercased()
        let directory = root.appendingPathComponent(id)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var record = ContainerRecord(name: request.name, image: request.image, imageFingerprint: image.fingerprint,
                                     config: config.values, status: .creating, mac: request.mac)
        record.ipv4 = request.ipv4
        do {
            record = try context.store.insertContainer(record, addresses: context.containers.addresses)
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
        do {
            let spec = context.containers.spec(record)
            try FileManager.default.createDirectory(at: spec.directory, withIntermediateDirectories: true)
            let syncDirectory = try driver.prepareIncoming(spec)
            let secret = try trust.secrets.issue(migrationID: id, peerFingerprint: peerFingerprint)
            let port = try await streamPort()
            let migration = IncomingMigration(id: id, request: request, peerFingerprint: peerFingerprint, peerName: peerName,
                                              directory: directory, syncDirectory: syncDirectory)
            migration.store = try PageStore(directory: migration.storeDirectory)
            lock.withLock { active[id] = migration }
            context.events.log("info", "incoming migration \(id): \(request.name) from \(peerName) (\(request.mode.rawValue))")
            Task { [weak self] in
                try? await Task.sleep(for: Self.abandonAfter)
                if let self, !migration.with({ $0.finished }) {
                    await self.abort(id, reason: "the source went silent")
                }
            }
            return IncomingMigrationAnswer(id: id, secret: secret.secret, streamPort: port)
        } catch {
            await removeContainer(request.name)
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
    }

    // MARK: channels

    /// Runs on the listener's event loop: decide quickly, do the work on a thread.
    func authorize(_ header: PeerStreamHeader, peer fingerprint: String) throws -> @Sendable (Int32) -> Void {
        try trust.secrets.verify(migrationID: header.migration, presented: header.secret, peerFingerprint: fingerprint)
        guard let migration = lock.withLock({ active[header.migration] }) else {
            throw TrustError.forbidden(GodwitError("migration \(header.migration) is not in progress here"))
        }
        switch header.channel {
        case "rsync", "images":
            migration.transfers.enter()
            return { fd in
                defer { close(fd); migration.transfers.leave() }
                do {
                    if header.channel == "rsync" {
                        try FilesystemSync.serve(fd: fd, into: migration.syncDirectory)
                    } else {
                        try ImageTransfer.receive(from: fd, into: migration.imagesDirectory)
                    }
                } catch {
                    migration.with { $0.transferErrors.append("\(header.channel): \(error)") }
                }
            }
        case "precopy":
            // Pre-copy rounds, then the final scan's invalidations, then EOF. Restore waits
            // for this handler (transfers), so it sees the store as the freeze left it.
            guard migration.request.mode.preCopies, let store = migration.with({ $0.store }) else {
                throw TrustError.forbidden(GodwitError("migration \(header.migration) has no pre-copy rounds"))
            }
            migration.transfers.enter()
            return { fd in
                migration.with { $0.precopyFD = fd }
                defer {
                    migration.with { $0.precopyFD = nil }
                    close(fd)
                    migration.transfers.leave()
                }
                let receiver = PreCopyReceiver(reader: PageRecordReader(source: FileDescriptorStream(fd: fd, owns: false)), store: store)
                // A copy restore rebuilds CRIU's pages images from the store while the
                // container is frozen: allocate their space now, while it runs.
                let stage = !migration.request.mode.restoresLazily
                do {
                    while let receipt = try receiver.receiveRound() {
                        migration.with { $0.roundsReceived += 1 }
                        guard stage, receipt.dataPages > 0 else { continue }
                        for id in store.nsPIDs {
                            let pages = UInt64(store.pageCount(nsPID: id))
                            try? ImageRebuilder.prepareStaging(directory: migration.imagesDirectory, id: id,
                                                               bytes: (pages + pages / 20 + 256) * systemPageSize)
                        }
                    }
                } catch {
                    migration.with { $0.transferErrors.append("precopy: \(error)") }
                }
            }
        case "pages", "push":
            let push = header.channel == "push"
            return { fd in
                let previous = migration.with { m -> Int32? in
                    if push { defer { m.pushFD = fd }; return m.pushFD }
                    defer { m.pagesFD = fd }
                    return m.pagesFD
                }
                if let previous { close(previous) }
            }
        default:
            throw TrustError.forbidden(GodwitError("unknown migration channel '\(header.channel)'"))
        }
    }

    // MARK: restore, commit, abort

    func restore(_ id: String) async throws -> IncomingMigrationStatus {
        let migration = try migration(id)
        do {
            return try await blocking { [self] in
                guard migration.transfers.wait(timeout: .now() + 120) == .success else {
                    throw GodwitError("the filesystem and image transfers did not finish")
                }
                if let failure = migration.with({ $0.transferErrors.first }) { throw GodwitError("transfer failed: \(failure)") }
                guard poll(timeout: 30, { migration.with { $0.pagesFD != nil } }),
                      let fd = migration.with({ m -> Int32? in defer { m.pagesFD = nil }; return m.pagesFD }) else {
                    throw GodwitError("the source never opened the page channel")
                }
                // Hybrid: the source opened its push right after the final scan.
                var push: Int32?
                if migration.request.mode == .hybrid {
                    _ = poll(timeout: 10) { migration.with { $0.pushFD != nil } }
                    push = migration.with { m -> Int32? in defer { m.pushFD = nil }; return m.pushFD }
                }
                let spec = try self.spec(migration)
                let target = try driver.incomingTarget(spec, images: migration.imagesDirectory, store: migration.storeDirectory)
                guard let store = migration.with({ $0.store }) else { throw GodwitError("migration \(id) has no page store") }
                let restore = IncomingRestore(mode: migration.request.mode.restoresLazily ? .lazy : .copy, target: target, store: store)
                migration.with { $0.restore = restore }
                _ = try restore.restore(pages: fd, push: push)
                migration.with { $0.phase = "restored" }
                return migration.status()
            }
        } catch {
            let reason = (error as? GodwitError)?.message ?? "\(error)"
            await abort(id, reason: "restore failed: \(reason)")
            throw GodwitError("restore on \(context.options.hostName) failed: \(reason)",
                              hint: "the CRIU log is kept in \(migration.imagesDirectory)/restore.log on \(context.options.hostName) until the next move")
        }
    }

    func commit(_ id: String) async throws -> IncomingMigrationStatus {
        let migration = try migration(id)
        guard let restore = migration.with({ $0.restore }), let pid = restore.restoredPID else {
            throw RequestError.badRequest(GodwitError("migration \(id) has nothing restored to commit"))
        }
        let record = try context.store.container(migration.request.name)
        guard let record else { throw GodwitError.noSuchContainer(migration.request.name) }
        let spec = context.containers.spec(record)
        try restore.commit()
        let identity = try driver.adoptIncoming(spec, pid: pid)
        try context.store.updateContainer(record.name) {
            $0.status = .running
            $0.initProcess = identity
            $0.lastMigration = Date()
        }
        announce(pid: pid, address: record.ipv4)
        migration.with { $0.phase = restore.mode == .lazy ? "fetching" : "done" }
        context.events.lifecycle("container-migrated", container: record.name, context: ["from": migration.peerName])
        Task.detached { [self] in
            // Post-copy: the pages still on the source arrive now; then the move is done.
            let figures = restore.waitUntilLocal(timeout: 600)
            migration.with {
                $0.phase = figures.lost == nil ? "done" : "lost"
                $0.finished = true
            }
            if let lost = figures.lost {
                context.events.log("error", "container \(record.name) lost after its move: \(lost)")
                _ = try? context.store.updateContainer(record.name) { $0.status = .stopped; $0.initProcess = nil }
            }
            self.finish(migration, status: figures.lost == nil ? "moved" : "lost")
        }
        return migration.status()
    }

    /// Kills whatever was restored, removes the container's row and files: nothing stays.
    func abort(_ id: String, reason: String) async {
        guard let migration = lock.withLock({ active[id] }) else { return }
        let alreadyFinished = migration.with { m -> Bool in
            defer { m.finished = true; m.phase = "aborted" }
            return m.finished
        }
        guard !alreadyFinished else { return }
        migration.with { $0.restore }?.abort()
        if let fd = migration.with({ m -> Int32? in defer { m.pagesFD = nil }; return m.pagesFD }) { close(fd) }
        if let fd = migration.with({ m -> Int32? in defer { m.pushFD = nil }; return m.pushFD }) { close(fd) }
        // Stop a pre-copy receiver still writing into the store before the store goes.
        if let fd = migration.with({ $0.precopyFD }) { shutdown(fd, Int32(SHUT_RDWR)) }
        if migration.with({ $0.restore }) == nil {
            _ = try? await blocking { migration.transfers.wait(timeout: .now() + 30) == .success }
            migration.with { $0.store }?.destroy()
        }
        await removeContainer(migration.request.name)
        context.events.log("warning", "incoming migration \(id) of \(migration.request.name) aborted: \(reason)")
        finish(migration, status: "rolled-back")
    }

    private func finish(_ migration: IncomingMigration, status: String) {
        trust.secrets.revoke(migrationID: migration.id)
        lock.withLock {
            active[migration.id] = nil
            ended.append(migration)
            if ended.count > 32 { ended.removeFirst() }
        }
        _ = try? context.store.recordMigration(MigrationRecord(
            id: nil, container: migration.request.name, direction: "in", peer: migration.peerName,
            strategy: migration.request.mode.rawValue, status: status, startedAt: migration.startedAt,
            finishedAt: Date(), downtimeMilliseconds: nil, details: [:]))
        // Kept after a failed restore for the post-mortem, until the next daemon start.
        if status != "rolled-back" { try? FileManager.default.removeItem(at: migration.directory) }
    }

    private func removeContainer(_ name: String) async {
        guard let record = try? context.store.container(name) else { return }
        let spec = context.containers.spec(record)
        try? await driver.destroy(spec)
        try? FileManager.default.removeItem(at: spec.directory)
        try? context.store.deleteContainer(name)
    }

    private func spec(_ migration: IncomingMigration) throws -> DriverSpec {
        guard let record = try context.store.container(migration.request.name) else {
            throw GodwitError.noSuchContainer(migration.request.name)
        }
        return context.containers.spec(record)
    }

    /// The container's MAC now sits behind another port of the segment: a gratuitous ARP
    /// from it teaches the switches (and refreshes peers' caches) before a peer's next
    /// packet goes to the old port. busybox's arping: no iputils on these hosts.
    private func announce(pid: pid_t, address: String?) {
        guard context.containers.addresses != nil, let address else { return }
        _ = try? Command.run(["nsenter", "--net=/proc/\(pid)/ns/net", "busybox", "arping", "-U", "-c", "1", "-w", "1",
                              "-I", "eth0", address])
    }
}
