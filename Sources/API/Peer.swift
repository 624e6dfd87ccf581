import Foundation

// What daemons exchange over the HTTPS listener (mutual TLS), beyond enrollment.

/// `GET /1.0` over HTTPS: who answered, and whom it took the caller for. A peer checks
/// `fingerprint` against its pin (TLS already did; this makes it visible in logs and tests).
public struct PeerServerInfo: Codable, Sendable, Equatable {
    public var apiVersion: String
    public var version: String
    /// The daemon's host name (`godwitd --name`).
    public var name: String
    /// SHA-256 of this daemon's certificate, lowercase hex.
    public var fingerprint: String
    /// The name this daemon trusts the caller's certificate under.
    public var client: String?

    public init(apiVersion: String = "1.0", version: String, name: String, fingerprint: String, client: String?) {
        self.apiVersion = apiVersion; self.version = version; self.name = name
        self.fingerprint = fingerprint; self.client = client
    }

    enum CodingKeys: String, CodingKey {
        case version, name, fingerprint, client
        case apiVersion = "api_version"
    }
}
