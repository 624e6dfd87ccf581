import Foundation
import GodwitCore
import Hummingbird
import Logging
import ServiceLifecycle
import Trust

/// `godwitd --https ADDRESS:PORT`: where the daemon-to-daemon listener binds.
public struct HTTPSAddress: Sendable, Equatable, CustomStringConvertible {
    /// IP or name, without brackets.
    public var host: String
    public var port: Int

    public init(host: String, port: Int) { self.host = host; self.port = port }

    /// "10.77.0.11:8443", "[fd00::1]:8443" or "name:8443". The port is required: guessing
    /// one would make tokens name an address nobody listens on.
    public init(parsing text: String) throws {
        let hint = "write it as ADDRESS:PORT, e.g. 10.77.0.11:8443 or [fd00::1]:8443"
        var host: Substring
        let portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw GodwitError("invalid --https address '\(text)'", hint: hint)
            }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":") else {
                throw GodwitError("invalid --https address '\(text)' (no port, or an IPv6 address without brackets)", hint: hint)
            }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        host = host.filter { !$0.isWhitespace }[...]
        guard !host.isEmpty, let port = Int(portText), (1...65535).contains(port) else {
            throw GodwitError("invalid --https address '\(text)'", hint: hint)
        }
        self.init(host: String(host), port: port)
    }

    /// "ADDR:PORT" as tokens and `remote add` URLs want it (IPv6 bracketed).
    public var description: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }

    /// 0.0.0.0 / :: listen everywhere but are no address a peer can dial, so they go into
    /// neither the certificate nor join tokens (the joining side must then give a URL).
    public var isUnspecified: Bool { ["0.0.0.0", "::", "0:0:0:0:0:0:0:0"].contains(host) }
}

/// Opened once by the HTTPS listener when it is bound; the unix-socket server waits for it,
/// so that a daemon answering on its socket is always reachable over HTTPS too (`lab up`
/// enrolls hosts right after the sockets answer).
final class ReadySignal: Sendable {
    private let stream: AsyncStream<Void>
    private let continuation: AsyncStream<Void>.Continuation

    init() { (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1)) }

    func open() { continuation.yield(()); continuation.finish() }

    /// True once opened; false when the waiting task was cancelled first.
    func wait() async -> Bool {
        for await _ in stream { return true }
        return false
    }
}

/// Runs `service` only after `ready` opens; a graceful shutdown before that (e.g. the
/// HTTPS listener failed to bind) simply ends it.
struct AfterReady: Service {
    let ready: ReadySignal
    let service: any Service

    func run() async throws {
        let opened = (try? await cancelWhenGracefulShutdown { await ready.wait() }) ?? false
        guard opened, !Task.isShuttingDownGracefully else { return }
        try await service.run()
    }
}

/// The HTTPS application, with bind failures turned into an error that names the address
/// (NIO's own says only "Address already in use (errno: 98)").
struct PeerListener: Service {
    let app: any Service
    let address: HTTPSAddress

    func run() async throws {
        do {
            try await app.run()
        } catch {
            let text = String(describing: error)
            let inUse = text.contains("Address already in use") || text.contains("errno: 98")
            throw GodwitError("cannot listen for HTTPS on \(address): \(inUse ? "the port is already in use" : text)",
                              hint: inUse ? "stop whatever listens there (`ss -ltnp | grep :\(address.port)`) or choose another --https port"
                                          : "check that \(address.host) is an address of this host (network namespace) and the port is free")
        }
    }

    /// The listener for `trust`: mutual TLS, the trust check in front of every route, the
    /// enrollment endpoint, then the daemon's peer routes. Opens `ready` once bound.
    static func make(trust: TrustLayer, address: HTTPSAddress, context: DaemonContext,
                     ready: ReadySignal, logger: Logger) throws -> PeerListener {
        let router = Router(context: PeerRequestContext.self)
        // First, so it also shapes errors thrown by peer routes (trust answers its own 403s).
        router.middlewares.add(ErrorMiddleware())
        PeerRoutes.add(to: trust.httpsRouter(router), context: context)
        let app = Application(
            router: router, server: try trust.httpsServer(),
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: "godwitd"),
            onServerRunning: { _ in
                logger.info("HTTPS (mutual TLS) on \(address), certificate \(trust.identity.fingerprint)")
                ready.open()
            },
            logger: logger)
        return PeerListener(app: app, address: address)
    }
}
