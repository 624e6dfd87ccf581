import Foundation
import GodwitCore

/// What `godwit trust add NAME` prints and `godwit remote add ... --token T` consumes: like
/// LXD's trust token, base64url of a JSON object. It tells the joining host where the server
/// is, which certificate to pin, and the one-time secret that proves the server's admin
/// invited it. It is not signed: tampering with it only makes the join fail (a changed
/// fingerprint is not the server's, a changed secret is not in the server's store).
public struct JoinToken: Codable, Sendable, Equatable {
    /// The name the server gives the joining client in its trust store.
    public var clientName: String
    /// The server certificate's SHA-256 fingerprint: the client pins exactly this.
    public var fingerprint: String
    /// Where the server listens ("host:port"), in the server's order of preference.
    public var addresses: [String]
    /// base64url of 32 random bytes; the server keeps only its SHA-256.
    public var secret: String
    public var expiresAt: Date

    public static let secretLength = 32

    enum CodingKeys: String, CodingKey {
        case fingerprint, addresses, secret
        case clientName = "client_name"
        case expiresAt = "expires_at"
    }

    public init(clientName: String, fingerprint: String, addresses: [String], secret: String, expiresAt: Date) {
        self.clientName = clientName; self.fingerprint = fingerprint; self.addresses = addresses
        self.secret = secret; self.expiresAt = expiresAt
    }

    /// The text form users copy between hosts.
    public func encoded() throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .iso8601
        return Base64URL.encode(try encoder.encode(self))
    }

    public static func decode(_ text: String) throws -> JoinToken {
        let hint = "copy the whole token printed by `godwit trust add NAME` on the server (it is one line of letters, digits, - and _)"
        guard let data = Base64URL.decode(text) else {
            throw GodwitError("the join token is not base64url text", hint: hint)
        }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let token: JoinToken
        do {
            token = try decoder.decode(JoinToken.self, from: data)
        } catch {
            throw GodwitError("the join token is damaged (its JSON does not decode)", hint: hint)
        }
        guard let fingerprint = Fingerprint.normalize(token.fingerprint) else {
            throw GodwitError("the join token's server fingerprint is malformed: '\(token.fingerprint)'", hint: hint)
        }
        guard let secret = Base64URL.decode(token.secret), secret.count == secretLength else {
            throw GodwitError("the join token's secret is malformed", hint: hint)
        }
        var normalized = token
        normalized.fingerprint = fingerprint
        return normalized
    }

    /// The secret's bytes (validated by `decode`).
    var secretBytes: [UInt8] { Base64URL.decode(secret).map(Array.init) ?? [] }

    public func isExpired(at now: Date = Date()) -> Bool { now >= expiresAt }
}

/// A token the server handed out and has not seen used yet. Only the secret's hash is kept,
/// so reading the state file does not let anyone join.
public struct PendingToken: Codable, Sendable, Equatable {
    public var clientName: String
    /// SHA-256 of the secret's bytes, hex.
    public var secretHash: String
    public var createdAt: Date
    public var expiresAt: Date

    public init(clientName: String, secretHash: String, createdAt: Date, expiresAt: Date) {
        self.clientName = clientName; self.secretHash = secretHash; self.createdAt = createdAt; self.expiresAt = expiresAt
    }

    enum CodingKeys: String, CodingKey {
        case clientName = "client_name"
        case secretHash = "secret_hash"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
    }
}

/// Names of trusted clients and remotes: they appear in commands (`trust remove NAME`,
/// `godwit move c1 NAME:`), so they must be short, unambiguous and free of ':' and '/'.
public enum TrustName {
    public static func validate(_ name: String, what: String = "name") throws {
        let allowed = name.unicodeScalars.allSatisfy {
            ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || "-_.".unicodeScalars.contains($0)
        }
        guard !name.isEmpty, name.count <= 63, allowed, name.first != "-", name.first != "." else {
            throw GodwitError("invalid \(what) '\(name)'",
                              hint: "use 1 to 63 letters, digits, '-', '_' or '.', not starting with '-' or '.'")
        }
    }
}
