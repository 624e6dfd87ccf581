import API
import AsyncHTTPClient
import Foundation
import GodwitCore
import NIOCore
import NIOHTTP1
import NIOSSL

/// An HTTPS client for one remote: presents our identity and accepts only the remote's
/// pinned certificate. Owns its HTTPClient: call `shutdown()` (or use `with`), in every path.
public final class PeerClient: Sendable {
    public let remote: Remote
    let http: HTTPClient

    public init(remote: Remote, identity: HostIdentity?, connectTimeout: TimeAmount = .seconds(10)) throws {
        self.remote = remote
        var configuration = HTTPClient.Configuration(
            tlsConfiguration: try MutualTLS.clientConfiguration(identity: identity, pinnedCertificatePEM: remote.certificatePEM),
            timeout: .init(connect: connectTimeout))
        // A refused connection or a failed handshake (wrong pin) must surface at once, not
        // be retried silently until the request's deadline.
        configuration.connectionPool = .init(idleTimeout: .seconds(60))
        configuration.connectionPool.retryConnectionEstablishment = false
        http = HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }

    /// Runs `body` with a client and shuts it down afterwards, whether `body` threw or not.
    public static func with<T>(_ remote: Remote, identity: HostIdentity?,
                               _ body: (PeerClient) async throws -> T) async throws -> T {
        let client = try PeerClient(remote: remote, identity: identity)
        do {
            let result = try await body(client)
            try await client.shutdown()
            return result
        } catch {
            try? await client.shutdown()
            throw error
        }
    }

    public func shutdown() async throws { try await http.shutdown() }

    /// One request; the status and body as received. Connection and TLS failures become a
    /// GodwitError naming the remote; a wrong server certificate says so.
    public func send(_ method: HTTPMethod, _ path: String, body: Data? = nil,
                     timeout: TimeAmount = .seconds(60)) async throws -> (status: Int, body: Data) {
        var request = HTTPClientRequest(url: remote.url.trimmingSuffix("/") + path)
        request.method = method
        if let body {
            request.headers.add(name: "Content-Type", value: "application/json")
            request.body = .bytes(ByteBuffer(bytes: body))
        }
        do {
            let response = try await http.execute(request, timeout: timeout)
            let data = try await response.body.collect(upTo: 64 << 20)
            return (Int(response.status.code), Data(data.readableBytesView))
        } catch {
            throw PeerClient.connectionError(error, remote: remote)
        }
    }

    /// A sync call: decodes the envelope's metadata, or throws the remote's error response.
    public func call<T: Codable & Sendable>(_ method: HTTPMethod, _ path: String, body: (any Encodable)? = nil,
                                            as type: T.Type = T.self) async throws -> T {
        let data = try body.map { try APICoding.encoder().encode($0) }
        let (status, answer) = try await send(method, path, body: data)
        if status >= 400 {
            if let failure = try? APICoding.decoder().decode(ErrorResponse.self, from: answer) {
                throw TrustError(status, GodwitError(failure.error, hint: failure.hint,
                                                     context: failure.context.compactMap { $0.count == 2 ? ($0[0], $0[1]) : nil })
                    .with("remote", remote.name))
            }
            throw TrustError(status, GodwitError("remote '\(remote.name)' answered HTTP \(status)").with("path", path))
        }
        guard let metadata = try APICoding.decoder().decode(ResponseEnvelope<T>.self, from: answer).metadata else {
            throw GodwitError("remote '\(remote.name)' answered without metadata").with("path", path)
        }
        return metadata
    }

    static func connectionError(_ error: any Error, remote: Remote) -> GodwitError {
        let text = String(describing: error)
        // AsyncHTTPClient passes NIOSSL's errors through; the text test catches wrapped ones.
        let tls = error is NIOSSLError || error is BoringSSLError
            || text.contains("handshake") || text.contains("SSL") || text.contains("CERTIFICATE")
        if tls {
            return GodwitError("TLS with remote '\(remote.name)' failed: the server did not present the pinned certificate, or refused ours (\(text.prefix(200)))",
                               hint: "if the remote's identity really changed, `godwit remote remove \(remote.name)` and add it again with a new token; otherwise someone may be intercepting the connection",
                               context: [("url", remote.url), ("pinned", remote.fingerprint)])
        }
        return GodwitError("cannot reach remote '\(remote.name)': \(text.prefix(200))",
                           hint: "is godwitd running there with its HTTPS listener, and is the address right?",
                           context: [("url", remote.url)])
    }
}

extension String {
    func trimmingSuffix(_ suffix: String) -> String {
        hasSuffix(suffix) ? String(dropLast(suffix.count)) : self
    }
}
