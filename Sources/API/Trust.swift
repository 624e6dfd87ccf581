import Foundation

// Requests and answers of the trust endpoints: enrollment over HTTPS (daemon to daemon), and
// the CLI's `trust` and `remote` verbs over the unix socket.

/// `POST /1.0/certificates` over HTTPS: the client presents its certificate in the TLS
/// handshake and the join token's secret here.
public struct EnrollmentRequest: Codable, Sendable, Equatable {
    /// The `secret` field of the join token (base64url).
    public var secret: String

    public init(secret: String) { self.secret = secret }
}

/// What the server registered.
public struct EnrollmentResponse: Codable, Sendable, Equatable {
    public var name: String
    public var fingerprint: String

    public init(name: String, fingerprint: String) { self.name = name; self.fingerprint = fingerprint }
}

/// `godwit trust add NAME` → `POST /1.0/trust/tokens`.
public struct TrustTokenRequest: Codable, Sendable, Equatable {
    public var name: String
    /// Seconds; the daemon's default (1 h) when nil.
    public var lifetime: Double?

    public init(name: String, lifetime: Double? = nil) { self.name = name; self.lifetime = lifetime }
}

/// The printed token and what it grants.
public struct TrustTokenInfo: Codable, Sendable, Equatable {
    public var name: String
    public var token: String
    public var expiresAt: Date

    public init(name: String, token: String, expiresAt: Date) { self.name = name; self.token = token; self.expiresAt = expiresAt }

    enum CodingKeys: String, CodingKey {
        case name, token
        case expiresAt = "expires_at"
    }
}

/// One line of `godwit trust list`: a trusted client, or a token not yet used.
public struct TrustEntryInfo: Codable, Sendable, Equatable {
    public var name: String
    /// "client" (trusted certificate) or "token" (pending).
    public var kind: String
    public var fingerprint: String?
    public var since: Date
    public var expiresAt: Date?

    public init(name: String, kind: String, fingerprint: String?, since: Date, expiresAt: Date?) {
        self.name = name; self.kind = kind; self.fingerprint = fingerprint; self.since = since; self.expiresAt = expiresAt
    }

    enum CodingKeys: String, CodingKey {
        case name, kind, fingerprint, since
        case expiresAt = "expires_at"
    }
}

/// `godwit remote add NAME [URL] --token T` → `POST /1.0/remotes`.
public struct RemoteAddRequest: Codable, Sendable, Equatable {
    public var name: String
    /// "https://ADDR:PORT"; the token's addresses are tried when nil.
    public var url: String?
    public var token: String

    public init(name: String, url: String?, token: String) { self.name = name; self.url = url; self.token = token }
}

/// One line of `godwit remote list`.
public struct RemoteInfo: Codable, Sendable, Equatable {
    public var name: String
    public var url: String
    public var fingerprint: String
    public var serverName: String?
    public var addedAt: Date

    public init(name: String, url: String, fingerprint: String, serverName: String?, addedAt: Date) {
        self.name = name; self.url = url; self.fingerprint = fingerprint; self.serverName = serverName; self.addedAt = addedAt
    }

    enum CodingKeys: String, CodingKey {
        case name, url, fingerprint
        case serverName = "server_name"
        case addedAt = "added_at"
    }
}
