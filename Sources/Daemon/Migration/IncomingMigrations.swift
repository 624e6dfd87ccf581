import API
import Foundation
import GodwitCore
import Migration
import Runtime
import Synchronization
import Trust

/// The daemon's side of moves into this host: it reserves the container's row, checks who
/// may open which data channel, and keeps a DestinationEngine per migration, which does
/// the move itself. State lives in the engines and in the container's row (status
/// Creating until the commit). A daemon that dies before anything was restored leaves a
/// Creating row, which the next start removes like any interrupted launch; from the
/// restore on, a journal lets the next start finish or undo the move (MoveRecovery).
///
/// Concurrency model: the registry (active and ended migrations, the listener) is behind
/// one Mutex; the engines guard their own state. Channel handlers run on the listener's
/// threads.
public final class IncomingMigrations: Sendable {
    let context: DaemonContext
    let trust: TrustLayer
    let driver: any MigrationDriver
    let root: URL
    private struct Registry {
        var active: [String: Incoming] = [:]
        /// Ended migrations, so the source can still read the final status (newest last).
        var ended: [Incoming] = []
        var listener: PeerStreamListener?
    }
    private let registry = Mutex(Registry())
    private let listenHost: String
    /// A source that never commits nor aborts (it died) must not leave a half-restored
    /// container forever. An engine refuses the abort once committed.
    static let abandonAfter: Duration = .seconds(600)

    struct Incoming: Sendable {
        let engine: DestinationEngine
        let peerFingerprint: String
        let peerName: String
        let startedAt: Date
    }

    init(context: DaemonContext, trust: TrustLayer, driver: any MigrationDriver, listenHost: String) {
        self.context = context; self.trust = trust; self.driver = driver; self.listenHost = listenHost
        root = context.options.stateDir.appendingPathComponent("migrations")
        // Whatever a previous daemon left here belongs to moves that can't resume.
        try? FileManager.default.removeItem(at: root)
        try? OwnerOnly.directory(root.path)
        context.images.removeLeftoverTransfers()
    }

    /// The data-channel listener, started on first use (port chosen by the kernel).
    func streamPort() async throws -> Int {
        if let listener = registry.withLock({ $0.listener }) { return listener.port }
        let started = try await PeerStreamListener.start(host: listenHost, port: 0, identity: trust.identity,
                                                         trustStore: trust.store) { [weak self] header, fingerprint in
            guard let self else { throw GodwitError("the daemon is shutting down") }
            return try self.authorize(header, peer: fingerprint)
        }
        return registry.withLock { r in
            if let listener = r.listener { Task { await started.close() }; return listener.port }
            r.listener = started
            return started.port
        }
    }

    /// The migration `id`, if `caller` (a peer's certificate fingerprint) began it.
    func migration(_ id: String, caller: String) throws -> DestinationEngine {
        guard let incoming = registry.withLock({ r in r.active[id] ?? r.ended.last { $0.engine.id == id } }) else {
            throw RequestError.notFound(GodwitError("no incoming migration \(id)", hint: "it ended, or this daemon restarted"))
        }
        guard incoming.peerFingerprint == caller else {
            throw TrustError.forbidden(GodwitError("migration \(id) belongs to another host"))
        }
        return incoming.engine
    }

    /// Whether `caller` moved a container named `name` here (a move that ended).
    func moved(_ name: String, by caller: String) -> Bool {
        registry.withLock { r in
            r.ended.contains { $0.peerFingerprint == caller && $0.engine.request.name == name && $0.engine.outcome.map { if case .moved = $0 { true } else { false } } == true }
        }
    }

    // MARK: begin

    func begin(_ request: IncomingMigrationRequest, peerFingerprint: String, peerName: String) async throws -> IncomingMigrationAnswer {
        try RequestError.validating { try ContainerName.validate(request.name) }
        // The peer's word for the container's address and MAC: well-formed, or refused.
        try RequestError.validating {
            if let ipv4 = request.ipv4 { _ = try IPv4Address(ipv4) }
            _ = try MACAddress(request.mac)
        }
        let config = try RequestError.validating { try ContainerConfig(validating: request.config) }
        if try context.store.container(request.name) != nil {
            throw RequestError.conflict(GodwitError("a container named '\(request.name)' already exists on \(context.options.hostName)",
                                                    hint: "move it under another name: `godwit move NAME \(context.options.hostName):NEWNAME`"))
        }
        let (image, imageBytes) = try await localImage(for: request)
        let id = UUID().uuidString.lowercased()
        var record = ContainerRecord(name: request.name, image: image?.alias ?? request.image,
                                     imageFingerprint: image?.fingerprint ?? request.imageFingerprint,
                                     config: config.values, status: .creating, mac: request.mac)
        record.ipv4 = request.ipv4
        record = try context.containers.insertReservingIdmap(record, hostName: context.options.hostName)
        let host = DaemonDestinationHost(context: context, driver: driver, name: request.name,
                                         journalEntry: DestinationJournal(migrationID: id, container: request.name,
                                                                          peerFingerprint: peerFingerprint, peerName: peerName,
                                                                          mode: request.mode, phase: .restored, pid: 0))
        do {
            let spec = context.containers.spec(record)
            try FileManager.default.createDirectory(at: spec.directory, withIntermediateDirectories: true)
            host.syncDirectory = try driver.prepareIncoming(spec)
            if let imageBytes {
                host.incomingImage = IncomingImage(
                    staging: try context.images.stageTransfer(fingerprint: request.imageFingerprint, bytes: imageBytes,
                                                              hostName: context.options.hostName),
                    fingerprint: request.imageFingerprint, alias: request.image, bytes: imageBytes, peer: peerName)
            }
            let engine = try DestinationEngine(id: id, request: request, host: host,
                                               directory: root.appendingPathComponent(id).path)
            let secret = try trust.secrets.issue(migrationID: id, peerFingerprint: peerFingerprint)
            let port = try await streamPort()
            let incoming = Incoming(engine: engine, peerFingerprint: peerFingerprint, peerName: peerName, startedAt: Date())
            engine.onFinish = { [weak self] outcome in self?.finish(incoming, outcome: outcome) }
            registry.withLock { $0.active[id] = incoming }
            context.events.log("info", "incoming migration \(id): \(request.name) from \(peerName) (\(request.mode.rawValue))")
            abandonWhenSilent(engine)
            if imageBytes != nil {
                context.events.log("info", "incoming migration \(id): \(peerName) sends image '\(request.image)' (\(request.imageFingerprint.prefix(12)))")
            }
            return IncomingMigrationAnswer(id: id, secret: secret.secret, streamPort: port, imageNeeded: imageBytes == nil ? nil : true)
        } catch {
            await host.discard()
            try? FileManager.default.removeItem(at: root.appendingPathComponent(id))
            throw error
        }
    }

    /// The container's image here, found by fingerprint under any alias; nil with the size
    /// to receive when this host lacks it and the source can send it (its request says how
    /// big it is). A source that can't is refused, as before images travelled.
    private func localImage(for request: IncomingMigrationRequest) async throws -> (ImageRecord?, UInt64?) {
        let here = context.options.hostName
        guard !request.imageFingerprint.isEmpty else {
            // A source that gives no fingerprint: by alias, as before.
            guard try context.images.isKnown(request.image) else { throw Self.imageMissing(request.image, on: here) }
            return (try await context.images.resolve(request.image), nil)
        }
        guard ImageStore.isFingerprint(request.imageFingerprint) else {
            throw RequestError.badRequest(GodwitError("'\(request.imageFingerprint.prefix(80))' is not an image fingerprint"))
        }
        if let found = try context.images.image(fingerprint: request.imageFingerprint) { return (found, nil) }
        // Built on first use: this host's own build may be the very same image.
        if request.image == BuiltinImage.busybox, let built = try? await context.images.resolve(request.image),
           built.fingerprint == request.imageFingerprint {
            return (built, nil)
        }
        guard let bytes = request.imageBytes else { throw Self.imageMissing(request.image, on: here) }
        try RequestError.validating { try ContainerName.validate(request.image) }
        return (nil, bytes)
    }

    static func imageMissing(_ alias: String, on host: String) -> RequestError {
        .badRequest(GodwitError("image '\(alias)' is not on \(host)",
                                hint: "import the same image there first (`godwit image import`), or move from a Godwit that carries images"))
    }

    /// Silence, not duration: a migration whose source does nothing for this long is
    /// abandoned; one that is committed can't be (the engine refuses).
    private func abandonWhenSilent(_ engine: DestinationEngine) {
        Task { [weak self] in
            let limit = Double(Self.abandonAfter.components.seconds)
            while self != nil, engine.outcome == nil, !engine.isCommitted {
                if engine.silentSeconds > limit {
                    await engine.abort(reason: "the source went silent for \(Int(limit)) s")
                    return
                }
                try? await Task.sleep(for: .seconds(5))
            }
        }
    }

    // MARK: recovery

    /// Takes over a migration the previous daemon journaled (see MoveRecovery): `state` is
    /// `restored` (held for the source's commit or abort, or abandoned when it stays
    /// silent) or `finished` (the source can still read how it ended). Returns the engine.
    @discardableResult
    func recover(_ journal: DestinationJournal, record: ContainerRecord, state: DestinationEngine.State) throws -> DestinationEngine {
        let request = IncomingMigrationRequest(name: record.name, image: record.image, imageFingerprint: record.imageFingerprint,
                                               config: record.config, ipv4: record.ipv4, mac: record.mac, mode: journal.mode,
                                               sourceHost: journal.peerName, criuVersion: nil)
        let host = DaemonDestinationHost(context: context, driver: driver, name: record.name, journalEntry: journal)
        let engine = try DestinationEngine(recovered: journal.migrationID, request: request, host: host,
                                           directory: root.appendingPathComponent(journal.migrationID).path, state: state)
        let incoming = Incoming(engine: engine, peerFingerprint: journal.peerFingerprint, peerName: journal.peerName, startedAt: Date())
        if engine.outcome != nil {
            registry.withLock { r in
                r.ended.append(incoming)
                if r.ended.count > 32 { r.ended.removeFirst() }
            }
            return engine
        }
        engine.onFinish = { [weak self] outcome in self?.finish(incoming, outcome: outcome) }
        registry.withLock { $0.active[journal.migrationID] = incoming }
        abandonWhenSilent(engine)
        return engine
    }

    // MARK: channels

    /// Runs on the listener's event loop: decide quickly, do the work on a thread.
    func authorize(_ header: PeerStreamHeader, peer fingerprint: String) throws -> @Sendable (Int32) -> Void {
        try trust.secrets.verify(migrationID: header.migration, presented: header.secret, peerFingerprint: fingerprint)
        guard let incoming = registry.withLock({ $0.active[header.migration] }) else {
            throw TrustError.forbidden(GodwitError("migration \(header.migration) is not in progress here"))
        }
        guard let channel = MigrationChannel(rawValue: header.channel) else {
            throw TrustError.forbidden(GodwitError("unknown migration channel '\(header.channel)'"))
        }
        do { return try incoming.engine.handler(for: channel) } catch { throw TrustError.forbidden(GodwitError.wrap(error, doing: "opening \(channel.rawValue)")) }
    }

    // MARK: end

    private func finish(_ incoming: Incoming, outcome: DestinationEngine.Outcome) {
        let engine = incoming.engine
        trust.secrets.revoke(migrationID: engine.id)
        registry.withLock { r in
            r.active[engine.id] = nil
            r.ended.append(incoming)
            if r.ended.count > 32 { r.ended.removeFirst() }
        }
        switch outcome {
        case .moved:
            context.events.lifecycle("container-migrated", container: engine.request.name, context: ["from": incoming.peerName])
        case .rolledBack(let reason):
            context.events.log("warning", "incoming migration \(engine.id) of \(engine.request.name) aborted: \(reason)")
        case .lost(let why):
            context.events.log("error", "container \(engine.request.name) lost after its move: \(why)")
        }
        _ = try? context.store.recordMigration(MigrationRecord(
            id: nil, container: engine.request.name, direction: "in", peer: incoming.peerName,
            strategy: engine.request.mode.rawValue, status: outcome.status, startedAt: incoming.startedAt,
            finishedAt: Date(), downtimeMilliseconds: nil, details: [:]))
    }
}

/// This daemon as the destination host of one incoming container: its row, runtime and
/// address announcement.
final class DaemonDestinationHost: DestinationHost, Sendable {
    let context: DaemonContext
    let driver: any MigrationDriver
    let name: String
    /// Set once the row exists, before the engine starts.
    private let sync = Mutex("")
    /// The journal's fixed part (who, what); the engine supplies phase and pid.
    private let journalEntry: DestinationJournal
    /// The image this host lacks and receives with the container (nil: it has it).
    private let image = Mutex<IncomingImage?>(nil)

    init(context: DaemonContext, driver: any MigrationDriver, name: String, journalEntry: DestinationJournal) {
        self.context = context; self.driver = driver; self.name = name; self.journalEntry = journalEntry
    }

    var hostName: String { context.options.hostName }

    var syncDirectory: String {
        get { sync.withLock { $0 } }
        set { sync.withLock { $0 = newValue } }
    }

    var incomingImage: IncomingImage? {
        get { image.withLock { $0 } }
        set { image.withLock { $0 = newValue } }
    }

    var imageStaging: String? { incomingImage?.staging }

    func imageArrived() throws {
        guard let incoming = incomingImage else { throw GodwitError("\(hostName) expected no image") }
        let record = try context.images.installTransferred(staging: incoming.staging, fingerprint: incoming.fingerprint,
                                                           alias: incoming.alias, announcedBytes: incoming.bytes, from: incoming.peer)
        // The container runs from this alias here (the source's may be taken by another image).
        try context.store.updateContainer(name) { $0.image = record.alias }
        context.events.log("info", "image '\(record.alias)' (\(record.fingerprint.prefix(12))) received from \(incoming.peer)")
    }

    private func spec() throws -> DriverSpec {
        guard let record = try context.store.container(name) else { throw GodwitError.noSuchContainer(name) }
        return context.containers.spec(record)
    }

    func restoreTarget(images: String, store: String) throws -> IncomingTarget {
        try driver.incomingTarget(try spec(), images: images, store: store)
    }

    func adopt(pid: pid_t) throws {
        do {
            let identity = try driver.adoptIncoming(try spec(), pid: pid)
            try context.store.updateContainer(name) {
                $0.status = .running
                $0.initProcess = identity
                $0.lastMigration = Date()
            }
        } catch {
            // The engine retries (the container runs: it is never killed for this).
            context.events.log("error", "container \(name) runs but could not be recorded: \((error as? GodwitError)?.message ?? "\(error)")")
            throw error
        }
    }

    func announce(pid: pid_t) {
        guard context.containers.addresses != nil, let address = (try? context.store.container(name))??.ipv4 else { return }
        AddressAnnouncement.gratuitousARP(initPID: pid, address: address)
    }

    func discard() async {
        // A staging tree not yet installed (after the install it is gone: renamed).
        if let staging = imageStaging { try? FileManager.default.removeItem(atPath: staging) }
        guard let record = try? context.store.container(name) else { return }
        let spec = context.containers.spec(record)
        try? await driver.destroy(spec)
        try? FileManager.default.removeItem(at: spec.directory)
        try? context.store.deleteContainer(name)
    }

    func pagesPending(_ pending: Bool) {
        let path = MoveRecovery.pagesPendingPath(context, name)
        if pending {
            FileManager.default.createFile(atPath: path, contents: Data(), attributes: [.posixPermissions: 0o600])
        } else {
            try? FileManager.default.removeItem(atPath: path)
        }
    }

    func journal(_ phase: DestinationJournal.Phase?, pid: pid_t) {
        let path = MoveRecovery.incomingJournalPath(context, name)
        guard let phase else { try? FileManager.default.removeItem(atPath: path); return }
        var entry = journalEntry
        entry.phase = phase
        entry.pid = pid
        do { try entry.write(to: path) } catch {
            context.events.log("warning", "incoming migration \(entry.migrationID): \(error)")
        }
    }

    func markLost(_ why: String) {
        _ = try? context.store.updateContainer(name) { $0.status = .stopped; $0.initProcess = nil }
    }
}

/// An image on its way here with a container: where it is staged, what it must become.
struct IncomingImage: Sendable {
    let staging: String
    let fingerprint: String
    let alias: String
    let bytes: UInt64
    let peer: String
}
