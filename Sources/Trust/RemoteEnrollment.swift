import API
import Foundation
import GodwitCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS

/// The client half of `godwit remote add NAME [URL] --token T`: fetch the server's
/// certificate and check it against the token's fingerprint (pin), enroll our certificate
/// with the token's secret, and remember the remote.
public enum RemoteEnrollment {
    /// Port of godwitd's HTTPS listener when a URL names none (LXD's, which users know).
    public static let defaultPort = 8443

    /// Joins the server the token describes. `url` overrides the token's addresses. Nothing is
    /// saved unless the server accepted us; a name already in `remotes` is refused before the
    /// token is spent.
    public static func join(name: String, url: String?, token: JoinToken, identity: HostIdentity,
                            remotes: RemoteList?, timeout: TimeAmount = .seconds(10)) async throws -> Remote {
        try TrustName.validate(name, what: "remote name")
        if let remotes, remotes.list().contains(where: { $0.name == name }) {
            throw TrustError.conflict(GodwitError("a remote named '\(name)' already exists",
                                                  hint: "`godwit remote remove \(name)` first, or choose another name"))
        }
        if token.isExpired() {
            throw GodwitError("the join token expired at \(ISO8601DateFormatter().string(from: token.expiresAt))",
                              hint: "ask for a new one: `godwit trust add \(token.clientName)` on the server")
        }
        if url == nil, token.addresses.isEmpty {
            throw GodwitError("the join token names no server address",
                              hint: "give the server's URL explicitly: `godwit remote add \(name) https://ADDR:PORT --token T`")
        }
        let candidates = try url.map { [try Endpoint(url: $0)] } ?? token.addresses.map { try Endpoint(url: "https://" + $0) }
        var failures: [String] = []
        for endpoint in candidates {
            let certificate: PeerCertificate
            do {
                certificate = try await fetchCertificate(host: endpoint.host, port: endpoint.port,
                                                         expectedFingerprint: token.fingerprint, timeout: timeout)
            } catch let error as PinMismatch {
                // Not "try the next address": the server there is not the one the token
                // names, which is either the wrong token or an interception. Stop.
                throw GodwitError("the server at \(endpoint.url) is not the one the token names",
                                  hint: "check that the token came from that host; if it did, someone may be intercepting the connection",
                                  context: [("expected", token.fingerprint), ("presented", error.presented)])
            } catch {
                failures.append("\(endpoint.url): \(error)")
                continue
            }
            let remote = Remote(name: name, url: endpoint.url, fingerprint: certificate.fingerprint,
                                certificatePEM: certificate.pem, serverName: certificate.commonName)
            _ = try await PeerClient.with(remote, identity: identity) { client in
                try await client.call(.POST, TrustEndpoints.enrollmentPath, body: EnrollmentRequest(secret: token.secret),
                                      as: EnrollmentResponse.self)
            }
            try remotes?.add(remote)
            return remote
        }
        throw GodwitError("cannot reach the server at any address: \(failures.joined(separator: "; "))",
                          hint: "is godwitd running there with its HTTPS listener? give the URL explicitly: `godwit remote add \(name) https://ADDR:PORT --token T`")
    }

    /// The certificate the server at host:port presents, accepted only if its fingerprint is
    /// `expectedFingerprint` (throws `PinMismatch` otherwise). AsyncHTTPClient does not show
    /// peer certificates, hence a bare NIO connection that only does the handshake.
    public static func fetchCertificate(host: String, port: Int, expectedFingerprint: String,
                                        timeout: TimeAmount = .seconds(10)) async throws -> PeerCertificate {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv13
        // Verification on, so that BoringSSL calls the custom callback below, which then
        // decides by fingerprint alone.
        tls.certificateVerification = .noHostnameVerification
        let sslContext = try NIOSSLContext(configuration: tls)
        let seen = NIOLockedValueBox<PeerCertificate?>(nil)
        let expected = expectedFingerprint
        let loop = MultiThreadedEventLoopGroup.singleton.next()
        // Completed by the handshake, an error, the connection closing, or the timeout,
        // whichever comes first (later completions are ignored by NIO).
        let handshake = loop.makePromise(of: Void.self)
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = try NIOSSLClientHandler(context: sslContext, serverHostname: nil,
                                                          customVerificationCallback: { certificates, promise in
                        guard let leaf = certificates.first, let peer = try? PeerCertificate(leaf) else {
                            promise.succeed(.failed)
                            return
                        }
                        seen.withLockedValue { $0 = peer }
                        promise.succeed(peer.fingerprint == expected ? .certificateVerified : .failed)
                    })
                    try channel.pipeline.syncOperations.addHandler(handler)
                    try channel.pipeline.syncOperations.addHandler(HandshakeWaiter(promise: handshake))
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            handshake.fail(error)  // an unfulfilled promise must not be dropped
            throw error
        }
        let deadline = loop.scheduleTask(in: timeout) {
            handshake.fail(GodwitError("TLS handshake with \(host):\(port) timed out"))
        }
        let outcome: Result<Void, any Error>
        do {
            try await handshake.futureResult.get()
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        deadline.cancel()
        try? await channel.close().get()
        let presented = seen.withLockedValue { $0 }
        switch outcome {
        case .success:
            guard let presented, presented.fingerprint == expected else {
                throw GodwitError("the handshake with \(host):\(port) completed without the pinned certificate (internal error)")
            }
            return presented
        case .failure(let error):
            if let presented, presented.fingerprint != expected { throw PinMismatch(presented: presented.fingerprint) }
            throw error
        }
    }

    /// The server presented a certificate other than the pinned one.
    public struct PinMismatch: Error, CustomStringConvertible {
        public let presented: String
        public var description: String { "the server presented certificate \(presented), not the pinned one" }
    }

    /// "https://ADDR[:PORT]" taken apart (IPv6 in brackets).
    struct Endpoint {
        let url: String
        let host: String
        let port: Int

        init(url text: String) throws {
            guard let components = URLComponents(string: text), components.scheme == "https",
                  let rawHost = components.host, !rawHost.isEmpty else {
                throw GodwitError("not an https URL: '\(text)'", hint: "write it as https://ADDR:PORT, e.g. https://10.77.0.2:8443")
            }
            host = rawHost.hasPrefix("[") ? String(rawHost.dropFirst().dropLast()) : rawHost
            port = components.port ?? RemoteEnrollment.defaultPort
            let shownHost = host.contains(":") ? "[\(host)]" : host
            url = "https://\(shownHost):\(port)"
        }
    }
}

/// Completes its promise when the TLS handshake finishes, or fails it when the connection
/// errors or closes first.
final class HandshakeWaiter: ChannelInboundHandler {
    typealias InboundIn = NIOAny
    let promise: EventLoopPromise<Void>

    init(promise: EventLoopPromise<Void>) { self.promise = promise }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent { promise.succeed(()) }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        promise.fail(error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        promise.fail(GodwitError("the server closed the connection during the TLS handshake"))
        context.fireChannelInactive()
    }
}
