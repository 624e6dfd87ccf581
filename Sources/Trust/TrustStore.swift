import Foundation
import GodwitCore
import NIOConcurrencyHelpers

/// A client certificate this host trusts: its holder may use every HTTPS endpoint.
public struct TrustedCertificate: Codable, Sendable, Equatable {
    public var fingerprint: String
    public var name: String
    public var certificatePEM: String
    public var addedAt: Date

    public init(fingerprint: String, name: String, certificatePEM: String, addedAt: Date) {
        self.fingerprint = fingerprint; self.name = name; self.certificatePEM = certificatePEM; self.addedAt = addedAt
    }

    enum CodingKeys: String, CodingKey {
        case fingerprint, name
        case certificatePEM = "certificate"
        case addedAt = "added_at"
    }
}

/// Everything the trust store persists. Small (a handful of hosts), so it is saved whole.
public struct TrustState: Codable, Sendable, Equatable {
    public var certificates: [TrustedCertificate] = []
    public var tokens: [PendingToken] = []

    public init(certificates: [TrustedCertificate] = [], tokens: [PendingToken] = []) {
        self.certificates = certificates; self.tokens = tokens
    }
}

/// Where the trust state lives. A protocol so the daemon can later keep it in its SQLite
/// store; `save` must be atomic (all of the new state or none of it).
public protocol TrustStorage: Sendable {
    func load() throws -> TrustState
    func save(_ state: TrustState) throws
}

/// `trust.json` in the state directory, written atomically with mode 0600.
public struct JSONFileTrustStorage: TrustStorage {
    public let file: URL

    public init(file: URL) { self.file = file }

    public func load() throws -> TrustState {
        guard let data = try AtomicFile.read(file) else { return TrustState() }
        do {
            return try APICodingLite.decoder.decode(TrustState.self, from: data)
        } catch {
            throw GodwitError("the trust store \(file.path) is damaged: \(error)",
                              hint: "restore it from a backup, or move it away to start with no trusted clients")
        }
    }

    public func save(_ state: TrustState) throws {
        try AtomicFile.write(try APICodingLite.encoder.encode(state), to: file, mode: 0o600)
    }
}

/// A trust decision the client caused (bad token, unknown name), with the HTTP status it
/// deserves; storage failures stay plain GodwitErrors (the server's fault, 500).
public struct TrustError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var error: GodwitError

    public init(_ status: Int, _ error: GodwitError) { self.status = status; self.error = error }

    public static func forbidden(_ error: GodwitError) -> TrustError { TrustError(403, error) }
    public static func notFound(_ error: GodwitError) -> TrustError { TrustError(404, error) }
    public static func conflict(_ error: GodwitError) -> TrustError { TrustError(409, error) }
    public static func badRequest(_ error: GodwitError) -> TrustError { TrustError(400, error) }

    public var description: String { error.description }
}

/// The server side of trust: which client certificates are trusted, and which join tokens
/// are outstanding. Thread-safe and synchronous, because the HTTPS layer consults it on
/// every request (that is what makes `trust remove` effective at once, without a restart).
/// Every change is saved before it becomes visible, so memory never claims more than disk.
public final class TrustStore: Sendable {
    public static let defaultTokenLifetime: TimeInterval = 3600
    public static let maxTokenLifetime: TimeInterval = 30 * 86_400

    let storage: any TrustStorage
    let state: NIOLockedValueBox<TrustState>

    public init(storage: any TrustStorage) throws {
        self.storage = storage
        state = NIOLockedValueBox(try storage.load())
    }

    /// The JSON-file store in a state directory (`trust.json`).
    public convenience init(stateDir: URL) throws {
        try self.init(storage: JSONFileTrustStorage(file: stateDir.appendingPathComponent("trust.json")))
    }

    // MARK: reading

    /// The trusted entry for a fingerprint, or nil: the whole authorization check.
    public func trusted(fingerprint: String) -> TrustedCertificate? {
        state.withLockedValue { $0.certificates.first { $0.fingerprint == fingerprint } }
    }

    public func certificates() -> [TrustedCertificate] {
        state.withLockedValue { $0.certificates }.sorted { $0.name < $1.name }
    }

    /// Outstanding tokens that can still be used.
    public func pendingTokens(now: Date = Date()) -> [PendingToken] {
        state.withLockedValue { $0.tokens }.filter { $0.expiresAt > now }.sorted { $0.clientName < $1.clientName }
    }

    // MARK: changing

    /// `trust add NAME`: a single-use token for a client that will be known as `clientName`.
    public func createToken(clientName: String, serverFingerprint: String, addresses: [String],
                            lifetime: TimeInterval = defaultTokenLifetime, now: Date = Date()) throws -> JoinToken {
        try TrustName.validate(clientName, what: "client name")
        // From a client's request: a 1e300-second expiry formats as a date nobody can parse.
        guard lifetime.isFinite, lifetime > 0, lifetime <= Self.maxTokenLifetime else {
            throw TrustError.badRequest(GodwitError("a token's lifetime must be from 0 to \(Int(Self.maxTokenLifetime)) s (got \(lifetime) s)",
                                                    hint: "tokens are for enrolling a host now; the default is an hour"))
        }
        let secret = SecretBytes.random(count: JoinToken.secretLength)
        let pending = PendingToken(clientName: clientName, secretHash: Fingerprint.hex(SecretBytes.hash(secret)),
                                   createdAt: now, expiresAt: now.addingTimeInterval(lifetime))
        try mutate(now: now) { state in
            if state.certificates.contains(where: { $0.name == clientName }) {
                throw TrustError.conflict(GodwitError("a trusted client is already named '\(clientName)'",
                                                      hint: "choose another name, or `godwit trust remove \(clientName)` first"))
            }
            if state.tokens.contains(where: { $0.clientName == clientName }) {
                throw TrustError.conflict(GodwitError("a join token for '\(clientName)' is already pending",
                                                      hint: "use that token, or `godwit trust remove \(clientName)` to revoke it first"))
            }
            state.tokens.append(pending)
        }
        return JoinToken(clientName: clientName, fingerprint: serverFingerprint, addresses: addresses,
                         secret: Base64URL.encode(secret), expiresAt: pending.expiresAt)
    }

    /// Enrollment (POST /1.0/certificates): if `secret` matches an outstanding, unexpired token,
    /// the token is consumed and `peer` (the certificate the client presented in the TLS
    /// handshake) becomes trusted under the token's name. Check and consumption happen under
    /// one lock, so two concurrent uses of a token cannot both succeed.
    @discardableResult
    public func enroll(secret: String, peer: PeerCertificate, now: Date = Date()) throws -> TrustedCertificate {
        let hint = "ask the server's admin for a new token: `godwit trust add NAME` on that host"
        guard let bytes = Base64URL.decode(secret), bytes.count == JoinToken.secretLength else {
            throw TrustError.forbidden(GodwitError("the join token's secret is malformed", hint: hint))
        }
        let presented = SecretBytes.hash(bytes)
        var enrolled: TrustedCertificate?
        // The expired case must still be saved (the token is burned), so it is reported
        // after `mutate` rather than thrown from inside it, which would roll back.
        var expired: PendingToken?
        try mutate(now: now, pruning: false) { state in
            // Compare against every token, matching or not: the time taken does not say
            // how many tokens exist or which one came close.
            var match: Int?
            for (index, token) in state.tokens.enumerated() {
                let stored = Array(hexBytes: token.secretHash) ?? []
                if SecretBytes.constantTimeEquals(stored, presented) { match = index }
            }
            guard let index = match else {
                throw TrustError.forbidden(GodwitError("join token not valid: unknown, or already used", hint: hint))
            }
            let token = state.tokens.remove(at: index)
            guard token.expiresAt > now else {
                expired = token
                return
            }
            if let other = state.certificates.first(where: { $0.name == token.clientName && $0.fingerprint != peer.fingerprint }) {
                throw TrustError.conflict(GodwitError("another certificate is already trusted as '\(token.clientName)'",
                                                      hint: "`godwit trust remove \(token.clientName)` on the server, then create a new token")
                                            .with("fingerprint", other.fingerprint))
            }
            state.certificates.removeAll { $0.fingerprint == peer.fingerprint }
            let entry = TrustedCertificate(fingerprint: peer.fingerprint, name: token.clientName,
                                           certificatePEM: peer.pem, addedAt: now)
            state.certificates.append(entry)
            enrolled = entry
        }
        if let expired {
            throw TrustError.forbidden(GodwitError("join token for '\(expired.clientName)' expired at \(ISO8601DateFormatter().string(from: expired.expiresAt))",
                                                   hint: hint))
        }
        guard let enrolled else { throw GodwitError("enrollment recorded nothing (internal error)") }
        return enrolled
    }

    /// Trusts a certificate directly (e.g. `godwit trust add --certificate FILE`), no token.
    @discardableResult
    public func add(_ peer: PeerCertificate, name: String, now: Date = Date()) throws -> TrustedCertificate {
        try TrustName.validate(name, what: "client name")
        let entry = TrustedCertificate(fingerprint: peer.fingerprint, name: name, certificatePEM: peer.pem, addedAt: now)
        try mutate(now: now) { state in
            if state.certificates.contains(where: { $0.name == name && $0.fingerprint != peer.fingerprint }) {
                throw TrustError.conflict(GodwitError("a trusted client is already named '\(name)'",
                                                      hint: "choose another name, or `godwit trust remove \(name)` first"))
            }
            state.certificates.removeAll { $0.fingerprint == peer.fingerprint }
            state.certificates.append(entry)
        }
        return entry
    }

    /// `trust remove`: by name, or by a unique fingerprint prefix (at least 8 hex digits, as
    /// LXD accepts). Takes effect on the next request, also on open connections.
    @discardableResult
    public func remove(_ nameOrFingerprint: String, now: Date = Date()) throws -> TrustedCertificate {
        var removed: TrustedCertificate?
        try mutate(now: now) { state in
            let key = nameOrFingerprint.lowercased().filter { $0 != ":" }
            var matches = state.certificates.filter { $0.name == nameOrFingerprint }
            if matches.isEmpty, key.count >= 8, key.allSatisfy(\.isHexDigit) {
                matches = state.certificates.filter { $0.fingerprint.hasPrefix(key) }
            }
            guard let match = matches.first else {
                throw TrustError.notFound(GodwitError("no trusted client '\(nameOrFingerprint)'",
                                                      hint: "`godwit trust list` shows names and fingerprints"))
            }
            guard matches.count == 1 else {
                throw TrustError.conflict(GodwitError("'\(nameOrFingerprint)' matches \(matches.count) certificates",
                                                      hint: "give more digits of the fingerprint"))
            }
            state.certificates.removeAll { $0.fingerprint == match.fingerprint }
            removed = match
        }
        guard let removed else { throw GodwitError("removal recorded nothing (internal error)") }
        return removed
    }

    /// Revokes an outstanding token by client name; false when there was none.
    @discardableResult
    public func revokeToken(clientName: String, now: Date = Date()) throws -> Bool {
        var found = false
        try mutate(now: now) { state in
            found = state.tokens.contains { $0.clientName == clientName }
            state.tokens.removeAll { $0.clientName == clientName }
        }
        return found
    }

    /// Applies `change` to a copy, saves it, then publishes it; a throw (from the change or
    /// from saving) leaves both memory and disk as they were. Expired tokens are dropped on
    /// the way, so the state file does not grow with tokens nobody used.
    func mutate(now: Date, pruning: Bool = true, _ change: (inout TrustState) throws -> Void) throws {
        try state.withLockedValue { current in
            var next = current
            if pruning { next.tokens.removeAll { $0.expiresAt <= now } }
            try change(&next)
            guard next != current else { return }
            try storage.save(next)
            current = next
        }
    }
}

/// Dates as ISO 8601 and sorted keys, like the REST API, so state files read the same way.
enum APICodingLite {
    static var encoder: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return encoder
    }

    static var decoder: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return decoder
    }
}

extension Array where Element == UInt8 {
    /// Bytes from hex text; nil when the text is not hex.
    init?(hexBytes text: String) {
        guard text.count % 2 == 0 else { return nil }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.count / 2)
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        self = bytes
    }
}
