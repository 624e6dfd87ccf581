import Foundation
import GodwitCore
import NIOConcurrencyHelpers

/// The secret of one migration: the destination issues it when it accepts a migration, and
/// every later connection of that migration (image transfer, page server tunnel, rsync)
/// presents it. mTLS says *which host* is talking; the secret says *which migration* it may
/// touch, and being single-use it cannot be replayed by someone who recorded it.
public struct MigrationSecret: Sendable, Equatable {
    public let migrationID: String
    /// base64url of 32 random bytes: what travels to the peer.
    public let secret: String
    public let expiresAt: Date
}

/// Issued secrets, kept in memory only: a daemon restart aborts its migrations, so their
/// secrets must die with it. Only hashes are kept.
public final class MigrationSecrets: Sendable {
    public static let defaultLifetime: TimeInterval = 600

    struct Entry: Sendable {
        var hash: [UInt8]
        var expiresAt: Date
        /// The only trusted client allowed to present it (nil: any trusted client).
        var peerFingerprint: String?
    }

    let entries = NIOLockedValueBox<[String: Entry]>([:])

    public init() {}

    /// A new secret bound to `migrationID` (and, when given, to the peer that must present it).
    public func issue(migrationID: String, peerFingerprint: String? = nil,
                      lifetime: TimeInterval = defaultLifetime, now: Date = Date()) throws -> MigrationSecret {
        guard !migrationID.isEmpty else { throw GodwitError("a migration secret needs a migration id") }
        let bytes = SecretBytes.random(count: 32)
        let expiresAt = now.addingTimeInterval(lifetime)
        try entries.withLockedValue { entries in
            entries = entries.filter { $0.value.expiresAt > now }
            if entries[migrationID] != nil {
                throw TrustError.conflict(GodwitError("migration \(migrationID) already has a secret",
                                                      hint: "each migration gets one secret; start a new migration"))
            }
            entries[migrationID] = Entry(hash: SecretBytes.hash(bytes), expiresAt: expiresAt, peerFingerprint: peerFingerprint)
        }
        return MigrationSecret(migrationID: migrationID, secret: Base64URL.encode(bytes), expiresAt: expiresAt)
    }

    /// Accepts `presented` for `migrationID` once. The secret is consumed by the first
    /// successful use; a second use, a secret of another migration, an expired secret or a
    /// peer other than the one it was issued for are all refused (403).
    public func consume(migrationID: String, presented: String, peerFingerprint: String? = nil,
                        now: Date = Date()) throws {
        try check(migrationID: migrationID, presented: presented, peerFingerprint: peerFingerprint, now: now,
                  consuming: true)
    }

    /// Accepts `presented` for `migrationID` without consuming it: one migration opens several
    /// data channels (rsync, images, page server), each presenting the same secret. Replay is
    /// still bounded: only the peer it was issued to (when bound), only until it expires or
    /// the migration ends (`revoke`), which the daemon does on success, failure and cancel.
    public func verify(migrationID: String, presented: String, peerFingerprint: String? = nil,
                       now: Date = Date()) throws {
        try check(migrationID: migrationID, presented: presented, peerFingerprint: peerFingerprint, now: now,
                  consuming: false)
    }

    func check(migrationID: String, presented: String, peerFingerprint: String?, now: Date, consuming: Bool) throws {
        let context = [("migration", migrationID)]
        let refused = { (why: String) in
            TrustError.forbidden(GodwitError("migration secret refused: \(why)",
                                             hint: consuming
                                                 ? "a migration secret works once, for its own migration; start the migration again"
                                                 : "a migration secret works only for its own migration, until it ends; start the migration again",
                                             context: context))
        }
        let presentedHash = SecretBytes.hash(Array(Base64URL.decode(presented) ?? Data()))
        try entries.withLockedValue { entries in
            guard let entry = entries[migrationID] else {
                throw refused(consuming ? "unknown migration, or secret already used" : "unknown migration, or the migration ended")
            }
            guard entry.expiresAt > now else {
                entries[migrationID] = nil
                throw refused("expired")
            }
            guard SecretBytes.constantTimeEquals(entry.hash, presentedHash) else { throw refused("wrong secret") }
            if let bound = entry.peerFingerprint, bound != peerFingerprint {
                throw refused("presented by a host other than the one it was issued to")
            }
            if consuming { entries[migrationID] = nil }
        }
    }

    /// Forgets a migration's secret (the migration ended or was cancelled).
    public func revoke(migrationID: String) {
        _ = entries.withLockedValue { $0.removeValue(forKey: migrationID) }
    }
}
