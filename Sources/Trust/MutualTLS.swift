import Foundation
import GodwitCore
import HummingbirdTLS
import NIOCore
import NIOSSL

/// TLS settings for daemon-to-daemon HTTPS. Both ends are godwitd, so TLS 1.3 only.
///
/// Server: the TLS layer *asks* for a client certificate and accepts any certificate the
/// client proves it holds the key of; it does not decide trust. The HTTP layer
/// (`PeerTrustMiddleware`) decides, on every request, against the current `TrustStore`.
/// Deciding per request rather than per handshake is what lets a client that enrolls on a
/// connection use it at once, and makes `trust remove` effective on connections already open.
/// Untrusted and certificate-less clients still complete the handshake so that they can
/// reach the one open endpoint (enrollment) and get a 403 with a hint everywhere else.
public enum MutualTLS {
    /// For Hummingbird: `server: .tls(.http1(), configuration: MutualTLS.serverConfiguration(identity:))`.
    public static func serverConfiguration(identity: HostIdentity) throws -> TLSChannelConfiguration {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: [.certificate(try identity.nioCertificate())],
            privateKey: .privateKey(try identity.nioPrivateKey()))
        tls.minimumTLSVersion = .tlsv13
        // Request a certificate but let clients without one in (they get 403s with a hint,
        // which says more than a handshake alert).
        tls.certificateVerification = .optionalVerification
        // No CA can vouch for self-signed peers; never consult the system's roots.
        tls.trustRoots = .certificates([])
        return TLSChannelConfiguration(tlsConfiguration: tls, customVerificationCallback: acceptPresentedCertificate)
    }

    /// Replaces BoringSSL's CA-chain validation, which would reject every self-signed peer.
    /// The handshake still verifies the peer's signature with the certificate's key (proof
    /// of possession); who that key belongs to is the HTTP layer's question.
    static let acceptPresentedCertificate: TLSChannelConfiguration.CustomVerificationCallback = { certificates, promise in
        promise.succeed(certificates.isEmpty ? .failed : .certificateVerified)
    }

    /// For AsyncHTTPClient: present our identity (nil only in tests that play a stranger)
    /// and accept the server only if it presents exactly the pinned certificate. The pinned
    /// self-signed certificate is the sole trust root, and it is not a CA, so no other
    /// certificate can chain to it; the host name is not checked because the pin is stronger
    /// (and peers are usually addressed by IP).
    public static func clientConfiguration(identity: HostIdentity?, pinnedCertificatePEM: String) throws -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv13
        tls.certificateVerification = .noHostnameVerification
        let pinned: NIOSSLCertificate
        do {
            pinned = try NIOSSLCertificate(bytes: Array(pinnedCertificatePEM.utf8), format: .pem)
        } catch {
            throw GodwitError("the pinned server certificate does not parse: \(error)",
                              hint: "remove the remote and add it again with a new token")
        }
        tls.trustRoots = .certificates([pinned])
        if let identity {
            tls.certificateChain = [.certificate(try identity.nioCertificate())]
            tls.privateKey = .privateKey(try identity.nioPrivateKey())
        }
        return tls
    }
}
