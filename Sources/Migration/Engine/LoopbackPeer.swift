import API
import Foundation
import GodwitCore
import Synchronization

/// A destination in this process: the source half of the engine talks to a real
/// DestinationEngine through direct calls and socketpairs instead of HTTPS and TLS streams.
/// Everything else (CRIU, rsync, page protocol, both state machines) is what ships; the
/// engine tests move real containers through it.
///
/// Concurrency model: the engines and reports it collected and the test's settings are
/// the shared state (a test reads and sets them while a move runs), each behind a Mutex;
/// each channel's destination handler runs on its own thread, as the daemon's listener
/// runs it.
public final class LoopbackPeer: MigrationPeer, Sendable {
    public let name: String
    private let check: @Sendable () async throws -> PeerCapabilities
    private let makeHost: @Sendable (IncomingMigrationRequest) throws -> any DestinationHost
    private let directory: String
    private let collected = Mutex<(engines: [DestinationEngine], reports: [MoveReport])>(([], []))

    /// How a commit request can get lost on the way.
    public enum CommitFault: Sendable {
        /// The request never arrives.
        case lostRequest
        /// The destination commits, the answer never arrives.
        case lostAnswer
    }

    private struct Settings {
        var beforeDestinationCommit: (@Sendable () -> Void)?
        var failRestore = false
        var commitFaults: [CommitFault] = []
        var onCommitRequest: (@Sendable () -> Void)?
        var onEngine: (@Sendable (DestinationEngine) -> Void)?
        var pageLinkDown = false
        var cuttable = false
        /// Duplicates of both ends of the latest page channel (ours to close), so a cut
        /// reaches the sockets whatever the engines did with their descriptors.
        var pageChannel: [Int32] = []
    }
    private let settings = Mutex(Settings())

    /// Called on the destination when it is asked to commit, before it runs the container:
    /// the never-two-copies check of the tests looks at the source here.
    public var beforeDestinationCommit: (@Sendable () -> Void)? {
        get { settings.withLock { $0.beforeDestinationCommit } }
        set { settings.withLock { $0.beforeDestinationCommit = newValue } }
    }
    /// Test fault: the destination's restore fails (before CRIU runs).
    public var failRestore: Bool {
        get { settings.withLock { $0.failRestore } }
        set { settings.withLock { $0.failRestore = newValue } }
    }
    /// Test faults for the next commit requests, in order (one is used per request).
    public var commitFaults: [CommitFault] {
        get { settings.withLock { $0.commitFaults } }
        set { settings.withLock { $0.commitFaults = newValue } }
    }

    /// Called on every commit request the source sends, before any fault.
    public var onCommitRequest: (@Sendable () -> Void)? {
        get { settings.withLock { $0.onCommitRequest } }
        set { settings.withLock { $0.onCommitRequest = newValue } }
    }

    /// Called with each destination engine as it is created (tests set its hooks).
    public var onEngine: (@Sendable (DestinationEngine) -> Void)? {
        get { settings.withLock { $0.onEngine } }
        set { settings.withLock { $0.onEngine = newValue } }
    }

    /// Test fault: while true, the page channel can't be opened (the link is down).
    public var pageLinkDown: Bool {
        get { settings.withLock { $0.pageLinkDown } }
        set { settings.withLock { $0.pageLinkDown = newValue } }
    }

    /// Test fault: keep hold of each page channel, for `cutPageChannel` (a held socket
    /// only ends when its engine shuts it down, not when it merely closes it).
    public var pageChannelCuttable: Bool {
        get { settings.withLock { $0.cuttable } }
        set { settings.withLock { $0.cuttable = newValue } }
    }

    /// Test fault: breaks the current page channel in both directions, as a link that went
    /// down and stayed down long enough for TCP to give up.
    public func cutPageChannel() {
        let fds = settings.withLock { s -> [Int32] in defer { s.pageChannel = [] }; return s.pageChannel }
        for fd in fds {
            shutdown(fd, Int32(SHUT_RDWR))
            close(fd)
        }
    }

    deinit { for fd in settings.withLock({ $0.pageChannel }) { close(fd) } }

    /// `makeHost` gives the destination host for one incoming container; `directory` holds
    /// the migrations' scratch space (images, page stores).
    public init(name: String, directory: String, capabilities: @escaping @Sendable () async throws -> PeerCapabilities,
                makeHost: @escaping @Sendable (IncomingMigrationRequest) throws -> any DestinationHost) {
        self.name = name; self.directory = directory; self.check = capabilities; self.makeHost = makeHost
    }

    public var engines: [DestinationEngine] { collected.withLock { $0.engines } }
    public var reports: [MoveReport] { collected.withLock { $0.reports } }

    public func capabilities() async throws -> PeerCapabilities { try await check() }

    public func begin(_ request: IncomingMigrationRequest) async throws -> any MigrationSession {
        let id = UUID().uuidString.lowercased()
        let engine = try DestinationEngine(id: id, request: request, host: try makeHost(request), directory: directory + "/" + id)
        onEngine?(engine)
        collected.withLock { $0.engines.append(engine) }
        return Session(peer: self, engine: engine)
    }

    struct Session: MigrationSession {
        let peer: LoopbackPeer
        let engine: DestinationEngine
        var id: String { engine.id }

        func open(_ channel: MigrationChannel) throws -> Int32 {
            if channel == .pages, peer.pageLinkDown { throw GodwitError("injected: the link to \(peer.name) is down") }
            let handler: @Sendable (Int32) -> Void
            do { handler = try engine.handler(for: channel) } catch {
                throw ChannelRefused((error as? GodwitError)?.message ?? "\(error)")
            }
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                throw GodwitError.errno("socketpair")
            }
            let theirs = fds[1]
            if channel == .pages, peer.pageChannelCuttable {
                let dups = fds.map { fcntl($0, F_DUPFD_CLOEXEC, 0) }.filter { $0 >= 0 }
                let old = peer.settings.withLock { s -> [Int32] in defer { s.pageChannel = dups }; return s.pageChannel }
                for fd in old { Glibc.close(fd) }
            }
            let thread = Thread { handler(theirs) }
            thread.stackSize = 1 << 20
            thread.start()
            return fds[0]
        }

        func beginRestore() async throws -> IncomingMigrationStatus {
            if peer.failRestore {
                await engine.abort(reason: "restore failed: injected")
                return engine.status()
            }
            return try engine.beginRestore()
        }

        func commit() async throws -> IncomingMigrationStatus {
            let (fault, onRequest) = peer.settings.withLock { s -> (CommitFault?, (@Sendable () -> Void)?) in
                (s.commitFaults.isEmpty ? nil : s.commitFaults.removeFirst(), s.onCommitRequest)
            }
            onRequest?()
            if case .lostRequest? = fault { throw GodwitError("injected: the commit request was lost") }
            peer.beforeDestinationCommit?()
            let status = try await blocking { try engine.commitIdempotent() }
            if case .lostAnswer? = fault { throw GodwitError("injected: the commit's answer was lost") }
            return status
        }

        func status() async throws -> IncomingMigrationStatus { engine.status() }
        func abort(reason: String) async { await engine.abort(reason: reason) }
        func sourceLost() async { _ = engine.sourceLost(reason: "the source's page server ended") }
        func deliver(_ report: MoveReport) async { peer.collected.withLock { $0.reports.append(report) } }
        func close() async {}
    }
}
