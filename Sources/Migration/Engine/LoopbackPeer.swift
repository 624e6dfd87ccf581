import API
import Foundation
import GodwitCore

/// A destination in this process: the source half of the engine talks to a real
/// DestinationEngine through direct calls and socketpairs instead of HTTPS and TLS streams.
/// Everything else (CRIU, rsync, page protocol, both state machines) is what ships; the
/// engine tests move real containers through it.
///
/// Concurrency model: `engines` is the only shared state (the tests read it while a move
/// runs), behind a lock; each channel's destination handler runs on its own thread, as
/// the daemon's listener runs it.
public final class LoopbackPeer: MigrationPeer, @unchecked Sendable {
    public let name: String
    private let check: @Sendable () async throws -> PeerCapabilities
    private let makeHost: @Sendable (IncomingMigrationRequest) throws -> any DestinationHost
    private let directory: String
    private let lock = NSLock()
    private var enginesValue: [DestinationEngine] = []
    private var reportsValue: [MoveReport] = []
    /// Called on the destination when it is asked to commit, before it runs the container:
    /// the never-two-copies check of the tests looks at the source here.
    public var beforeDestinationCommit: (@Sendable () -> Void)?
    /// Test fault: the destination's restore fails (before CRIU runs).
    public var failRestore = false
    /// Called with each destination engine as it is created (tests set its hooks).
    public var onEngine: (@Sendable (DestinationEngine) -> Void)?

    /// `makeHost` gives the destination host for one incoming container; `directory` holds
    /// the migrations' scratch space (images, page stores).
    public init(name: String, directory: String, capabilities: @escaping @Sendable () async throws -> PeerCapabilities,
                makeHost: @escaping @Sendable (IncomingMigrationRequest) throws -> any DestinationHost) {
        self.name = name; self.directory = directory; self.check = capabilities; self.makeHost = makeHost
    }

    public var engines: [DestinationEngine] { lock.withLock { enginesValue } }
    public var reports: [MoveReport] { lock.withLock { reportsValue } }

    public func capabilities() async throws -> PeerCapabilities { try await check() }

    public func begin(_ request: IncomingMigrationRequest) async throws -> any MigrationSession {
        let id = UUID().uuidString.lowercased()
        let engine = try DestinationEngine(id: id, request: request, host: try makeHost(request), directory: directory + "/" + id)
        onEngine?(engine)
        lock.withLock { enginesValue.append(engine) }
        return Session(peer: self, engine: engine)
    }

    struct Session: MigrationSession {
        let peer: LoopbackPeer
        let engine: DestinationEngine
        var id: String { engine.id }

        func open(_ channel: MigrationChannel) throws -> Int32 {
            let handler = try engine.handler(for: channel)
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                throw GodwitError.errno("socketpair")
            }
            let theirs = fds[1]
            let thread = Thread { handler(theirs) }
            thread.stackSize = 1 << 20
            thread.start()
            return fds[0]
        }

        func restore() async throws -> IncomingMigrationStatus {
            if peer.failRestore {
                await engine.abort(reason: "injected restore failure")
                throw GodwitError("restore on \(peer.name) failed: injected")
            }
            return try await blocking { try engine.restore() }
        }

        func commit() async throws -> IncomingMigrationStatus {
            peer.beforeDestinationCommit?()
            return try await blocking { try engine.commitIdempotent() }
        }

        func status() async throws -> IncomingMigrationStatus { engine.status() }
        func abort(reason: String) async { await engine.abort(reason: reason) }
        func deliver(_ report: MoveReport) async { peer.lock.withLock { peer.reportsValue.append(report) } }
        func close() async {}
    }
}
