import API
import Foundation
import GodwitCore
import HostCheck
import Hummingbird
import Synchronization
import Trust

/// Moves between this daemon and its peers: the source side (`move`) and, through
/// `incoming`, the destination side. Created with the daemon; needs `--https` (trust)
/// and a driver that can migrate.
///
/// Concurrency model: set once by `attach` and read by every route afterwards, plus the
/// host check's one-minute cache: all of it behind one Mutex.
public final class MigrationService: Sendable {
    private struct State {
        var context: DaemonContext?
        var incoming: IncomingMigrations?
        var checkCache: (at: Date, capabilities: PeerCapabilities, tracker: DirtyTrackerKind?)?
    }
    private let state = Mutex(State())

    public init() {}

    /// Called once the daemon context exists (the context holds this service).
    public func attach(_ context: DaemonContext) {
        var incoming: IncomingMigrations?
        if let trust = context.trust, let driver = context.driver as? any MigrationDriver, let https = context.options.https {
            incoming = IncomingMigrations(context: context, trust: trust, driver: driver, listenHost: https.host)
        }
        state.withLock { $0.context = context; $0.incoming = incoming }
    }

    var context: DaemonContext {
        get throws {
            guard let context = state.withLock({ $0.context }) else { throw GodwitError("the migration service is not attached") }
            return context
        }
    }

    /// The destination side; the error says why this daemon can't take part in moves.
    func incoming() throws -> IncomingMigrations {
        if let incoming = state.withLock({ $0.incoming }) { return incoming }
        let context = try context
        if context.trust == nil {
            throw RequestError.badRequest(GodwitError("this daemon has no HTTPS listener, so it can't take part in moves",
                                                      hint: "start godwitd with --https ADDRESS:PORT"))
        }
        throw RequestError.badRequest(GodwitError("this daemon's driver (\(context.driver.kind)) can't migrate containers"))
    }

    func migrationDriver() throws -> any MigrationDriver {
        let context = try context
        guard let driver = context.driver as? any MigrationDriver else {
            throw RequestError.badRequest(GodwitError("this daemon's driver (\(context.driver.kind)) can't migrate containers"))
        }
        return driver
    }

    /// This host's support check, cached for a minute (it forks probes and runs CRIU).
    func capabilities() throws -> PeerCapabilities { try check().capabilities }

    /// The dirty tracker `godwit check` chose for this host (nil: none works).
    func hostTracker() throws -> DirtyTrackerKind? { try check().tracker }

    /// This host's capabilities, as the peer sees them (`GET /1.0/migrations/check`).
    public static func capabilities(_ report: HostReport) -> PeerCapabilities {
        PeerCapabilities(host: report.hostname, criuVersion: report.criu.version, strategies: report.strategies.map {
            let why = [$0.source.available ? nil : "as source: " + $0.source.detail,
                       $0.destination.available ? nil : "as destination: " + $0.destination.detail].compactMap { $0 }
            return StrategyOffer(strategy: $0.strategy.rawValue, asSource: $0.source.available,
                                 asDestination: $0.destination.available,
                                 reason: why.isEmpty ? nil : why.joined(separator: "; "))
        }, unprivilegedLazyRestore: report.unprivileged.userfaultfd.available)
    }

    private func check() throws -> (capabilities: PeerCapabilities, tracker: DirtyTrackerKind?) {
        let context = try context
        if let cached = state.withLock({ $0.checkCache }), Date().timeIntervalSince(cached.at) < 60 {
            return (cached.capabilities, cached.tracker)
        }
        let report = HostProbe.run(criuSetting: context.options.criu, stateDirectory: context.options.stateDir.path)
        var capabilities = Self.capabilities(report)
        capabilities.host = context.options.hostName
        let fresh = capabilities
        state.withLock { $0.checkCache = (Date(), fresh, report.dirtyTracker) }
        return (fresh, report.dirtyTracker)
    }

    // MARK: routes

    /// The daemon-to-daemon routes (HTTPS, behind the trust check).
    public func addPeerRoutes(to router: Router<PeerRequestContext>) {
        router.get("/1.0/migrations/check") { _, _ in try APIRoutes.sync(try self.capabilities()) }
        router.post("/1.0/migrations") { request, context in
            let body = try await APIRoutes.decode(IncomingMigrationRequest.self, request)
            guard let client = context.trustedClient else {
                throw TrustError.forbidden(GodwitError("moves need a trusted client certificate"))
            }
            return try APIRoutes.sync(try await self.incoming().begin(body, peerFingerprint: client.fingerprint,
                                                                      peerName: client.name))
        }
        // Per-migration routes answer only the peer that began the migration: another
        // trusted host must not restore, commit, abort or read someone else's move.
        router.post("/1.0/migrations/:id/restore") { _, context in
            let engine = try self.incoming().migration(try context.parameters.require("id"), caller: try Self.caller(context))
            return try APIRoutes.sync(try engine.beginRestore())
        }
        router.post("/1.0/migrations/:id/commit") { _, context in
            let engine = try self.incoming().migration(try context.parameters.require("id"), caller: try Self.caller(context))
            return try APIRoutes.sync(try await blocking { try engine.commitIdempotent() })
        }
        router.post("/1.0/migrations/:id/source-lost") { _, context in
            let engine = try self.incoming().migration(try context.parameters.require("id"), caller: try Self.caller(context))
            return try APIRoutes.sync(engine.sourceLost(reason: "its CRIU page server is gone"))
        }
        router.post("/1.0/migrations/reports") { request, context in
            // The source's final report, so `godwit info` shows the move on this side too;
            // only from the host that moved that container here.
            let report = try await APIRoutes.decode(MoveReport.self, request)
            guard try self.incoming().moved(report.newName, by: try Self.caller(context)) else {
                throw TrustError.forbidden(GodwitError("no move of '\(report.newName)' from this host ended here"))
            }
            self.record(report, direction: "in", peer: report.source, container: report.newName)
            return try APIRoutes.sync([String: String]())
        }
        router.get("/1.0/migrations/:id") { _, context in
            let engine = try self.incoming().migration(try context.parameters.require("id"), caller: try Self.caller(context))
            engine.touch()
            return try APIRoutes.sync(engine.status())
        }
        router.delete("/1.0/migrations/:id") { _, context in
            let engine = try self.incoming().migration(try context.parameters.require("id"), caller: try Self.caller(context))
            await engine.abort(reason: "the source aborted the move")
            return try APIRoutes.sync([String: String]())
        }
    }

    /// The fingerprint of the trusted host calling.
    static func caller(_ context: PeerRequestContext) throws -> String {
        guard let client = context.trustedClient else {
            throw TrustError.forbidden(GodwitError("moves need a trusted client certificate"))
        }
        return client.fingerprint
    }

    // MARK: moving out

    /// `POST /1.0/containers/{name}/move`: checks what can be checked before any work, then
    /// runs the move as an operation whose metadata ends with the report.
    public func move(_ name: String, _ request: MoveRequest) throws -> OperationInfo {
        let context = try context
        let record = try context.containers.record(name)
        guard record.status == .running else {
            throw RequestError.badRequest(GodwitError("container '\(name)' is \(record.status.rawValue.lowercased()); only running containers move live",
                                                      hint: record.status == .frozen ? "`godwit resume \(name)` first" : "`godwit start \(name)` first"))
        }
        guard let trust = context.trust else { _ = try incoming(); throw GodwitError("no trust layer") }
        do { _ = try trust.remotes.get(request.target) } catch {
            throw RequestError.badRequest(GodwitError("unknown remote '\(request.target)'",
                                                      hint: "`godwit remote list` shows the remotes; `godwit remote add` adds one"))
        }
        if let newName = request.newName { try RequestError.validating { try ContainerName.validate(newName) } }
        let driver = try migrationDriver()
        return try context.containers.operation("Moving", container: name) { handle in
            let report = try await MoveSource(service: self, context: context, trust: trust, driver: driver,
                                              record: record, request: request, handle: handle).run()
            let json = String(decoding: try APICoding.encoder().encode(report), as: UTF8.self)
            return ["report": json]
        }
    }

    // MARK: history

    func record(_ report: MoveReport, direction: String = "out", peer: String? = nil, container: String? = nil) {
        guard let context = try? context else { return }
        let json = (try? APICoding.encoder().encode(report)).map { String(decoding: $0, as: UTF8.self) } ?? "{}"
        _ = try? context.store.recordMigration(MigrationRecord(
            id: nil, container: container ?? report.container, direction: direction, peer: peer ?? report.destination,
            strategy: report.mode.rawValue,
            status: report.outcome, startedAt: report.startedAt, finishedAt: Date(),
            downtimeMilliseconds: report.frozenMillis.flatMap { $0.isFinite ? Int64(exactly: $0.rounded()) : nil },
            details: ["report": json]))
    }

    /// The move reports of `container` on this host (moves out of it, and into it), oldest first.
    public func reports(of container: String) throws -> [MoveReport] {
        try context.store.migrations(of: container).compactMap { record in
            record.details["report"].flatMap { try? APICoding.decoder().decode(MoveReport.self, from: Data($0.utf8)) }
        }
    }
}
