import API
import Foundation
import GodwitCore
import Hummingbird
import NIOCore
import NIOSSL

/// A request context that knows the TLS peer. The HTTPS router must use one (the unix
/// socket's `BasicRequestContext` has no peer to check).
public protocol PeerAwareRequestContext: RequestContext where Source == ApplicationRequestContextSource {
    /// The connection, to ask its TLS handler for the peer certificate.
    var channel: any Channel { get }
    /// Set by `PeerTrustMiddleware`: what the peer presented (nil: no certificate).
    var peer: PeerCertificate? { get set }
    /// Set by `PeerTrustMiddleware`: the trust-store entry when the peer is trusted.
    var trustedClient: TrustedCertificate? { get set }
}

/// The ready-made context for godwitd's HTTPS router.
public struct PeerRequestContext: PeerAwareRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let channel: any Channel
    public var peer: PeerCertificate?
    public var trustedClient: TrustedCertificate?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}

/// The authorization check of the HTTPS API, run on every request: the peer's certificate
/// fingerprint must be in the trust store *now*. Only `openEndpoint` requests (by default
/// enrollment) pass without trust. Fails closed: no TLS handler, no certificate, or any
/// error while asking is a 403.
public struct PeerTrustMiddleware<Context: PeerAwareRequestContext>: RouterMiddleware {
    let store: TrustStore
    let openEndpoint: @Sendable (Request) -> Bool

    public init(store: TrustStore, openEndpoint: @escaping @Sendable (Request) -> Bool = { TrustEndpoints.isEnrollment($0) }) {
        self.store = store
        self.openEndpoint = openEndpoint
    }

    public func handle(_ request: Request, context: Context,
                       next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let presented: NIOSSLCertificate?
        do {
            presented = try await context.channel.nioSSL_peerCertificate().get()
        } catch {
            return TrustEndpoints.errorResponse(.forbidden(GodwitError(
                "this endpoint is only served over mutual TLS",
                hint: "connect with https:// and a client certificate")))
        }
        if let presented {
            do {
                context.peer = try PeerCertificate(presented)
            } catch {
                return TrustEndpoints.errorResponse(.forbidden(GodwitError("cannot read the client certificate: \(error)")))
            }
        }
        if let peer = context.peer, let entry = store.trusted(fingerprint: peer.fingerprint) {
            context.trustedClient = entry
            return try await next(request, context)
        }
        if openEndpoint(request) { return try await next(request, context) }
        let hint = "on this host run `godwit trust add NAME`, then on the client `godwit remote add NAME https://ADDR:PORT --token TOKEN`"
        if let peer = context.peer {
            context.logger.info("refused untrusted client \(peer.fingerprint) on \(request.method) \(request.uri.path)")
            return TrustEndpoints.errorResponse(.forbidden(GodwitError(
                "not trusted: this host does not know the client certificate", hint: hint,
                context: [("fingerprint", peer.fingerprint)])))
        }
        return TrustEndpoints.errorResponse(.forbidden(GodwitError(
            "not trusted: no client certificate presented", hint: hint)))
    }
}

/// The open endpoint and the shape of HTTPS answers (LXD's envelopes, as on the unix socket).
public enum TrustEndpoints {
    public static let enrollmentPath = "/1.0/certificates"

    public static func isEnrollment(_ request: Request) -> Bool {
        request.method == .post && request.uri.path == enrollmentPath
    }

    /// `POST /1.0/certificates`: the peer's handshake certificate becomes trusted when the
    /// body's secret matches an outstanding join token. Taking the certificate from the
    /// handshake (not the body) means the client proved it holds the key.
    public static func addEnrollment<Context: PeerAwareRequestContext>(to router: Router<Context>, store: TrustStore) {
        router.post(RouterPath(enrollmentPath)) { request, context -> Response in
            do {
                guard let peer = context.peer else {
                    throw TrustError.forbidden(GodwitError("enrollment needs a client certificate",
                                                           hint: "the client must present the certificate it wants trusted"))
                }
                var request = request
                let body = try await request.collectBody(upTo: 64 << 10)
                let enrollment: EnrollmentRequest
                do {
                    enrollment = try APICoding.decoder().decode(EnrollmentRequest.self, from: Data(body.readableBytesView))
                } catch {
                    throw TrustError.badRequest(GodwitError("invalid enrollment request: \(error)",
                                                            hint: "send {\"secret\": \"<the join token's secret>\"}"))
                }
                let entry = try store.enroll(secret: enrollment.secret, peer: peer)
                context.logger.info("trusted client '\(entry.name)' (\(entry.fingerprint)) enrolled with a join token")
                return try syncResponse(EnrollmentResponse(name: entry.name, fingerprint: entry.fingerprint))
            } catch let error as TrustError {
                return errorResponse(error)
            } catch let error as GodwitError {
                return errorResponse(TrustError(500, error))
            } catch {
                return errorResponse(TrustError(500, GodwitError("enrollment failed: \(error)")))
            }
        }
    }

    public static func syncResponse<T: Codable & Sendable>(_ value: T) throws -> Response {
        var data = try APICoding.encoder().encode(ResponseEnvelope.sync(value))
        data.append(UInt8(ascii: "\n"))
        return Response(status: .ok, headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    /// The daemon's error shape: `{error, error_code, hint, context}`.
    public static func errorResponse(_ failure: TrustError) -> Response {
        let body = ErrorResponse(error: failure.error.message, errorCode: failure.status, hint: failure.error.hint,
                                 context: failure.error.context.map { [$0.0, $0.1] })
        var data = (try? APICoding.encoder().encode(body)) ?? Data("{\"error\":\"internal error\"}".utf8)
        data.append(UInt8(ascii: "\n"))
        return Response(status: .init(code: failure.status), headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}
