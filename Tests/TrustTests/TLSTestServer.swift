import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import NIOCore
import ServiceLifecycle
@testable import Trust

/// A real HTTPS server on 127.0.0.1 (a free port chosen by the kernel) with the trust layer
/// as godwitd will wire it: the mutual-TLS server configuration, `PeerTrustMiddleware`, the
/// open enrollment endpoint, and one protected route. Shut down when `body` returns or throws.
enum TLSTestServer {
    static func run<T: Sendable>(identity: HostIdentity, store: TrustStore,
                                 _ body: @Sendable (_ url: String) async throws -> T) async throws -> T {
        let router = Router(context: PeerRequestContext.self)
        router.add(middleware: PeerTrustMiddleware(store: store))
        TrustEndpoints.addEnrollment(to: router, store: store)
        router.get("/1.0/ping") { _, context -> Response in
            // Reaching here means the middleware found the peer trusted.
            // The client's port identifies the connection, so tests can tell a kept-alive one.
            try TrustEndpoints.syncResponse(["pong": context.trustedClient?.name ?? "?",
                                             "client_port": "\(context.channel.remoteAddress?.port ?? -1)"])
        }
        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        var logger = Logger(label: "trust-test-server")
        logger.logLevel = .warning
        let app = Application(
            router: router,
            server: try .tls(.http1(), configuration: try MutualTLS.serverConfiguration(identity: identity)),
            configuration: .init(address: .hostname("127.0.0.1", port: 0), serverName: "godwitd-test"),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? -1)
                portContinuation.finish()
            },
            logger: logger)
        // A ServiceGroup, so the server stops by graceful shutdown (not cancellation) in
        // every path.
        let services = ServiceGroup(configuration: .init(services: [app], gracefulShutdownSignals: [], logger: logger))
        return try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask {
                // Whatever happens, nobody must wait forever for a port.
                defer { portContinuation.finish() }
                try await services.run()
                return nil
            }
            var iterator = ports.makeAsyncIterator()
            guard let port = await iterator.next(), port > 0 else {
                await services.triggerGracefulShutdown()
                try await group.waitForAll()
                throw TestFailure("the test HTTPS server did not start")
            }
            do {
                let result = try await body("https://127.0.0.1:\(port)")
                await services.triggerGracefulShutdown()
                try await group.waitForAll()
                return result
            } catch {
                await services.triggerGracefulShutdown()
                try? await group.waitForAll()
                throw error
            }
        }
    }
}
