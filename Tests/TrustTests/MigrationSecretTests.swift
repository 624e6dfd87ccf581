import Foundation
import Testing
@testable import Trust

@Suite struct MigrationSecretTests {
    @Test func aSecretIsConsumedByItsFirstUse() throws {
        let secrets = MigrationSecrets()
        let issued = try secrets.issue(migrationID: "m1")
        #expect(Base64URL.decode(issued.secret)?.count == 32)
        try secrets.consume(migrationID: "m1", presented: issued.secret)
        let replay = #expect(throws: TrustError.self) { try secrets.consume(migrationID: "m1", presented: issued.secret) }
        #expect(replay?.status == 403)
        #expect(replay?.error.message.contains("already used") == true)
    }

    @Test func aSecretIsBoundToItsMigration() throws {
        let secrets = MigrationSecrets()
        let one = try secrets.issue(migrationID: "m1")
        let two = try secrets.issue(migrationID: "m2")
        #expect(one.secret != two.secret)
        #expect(throws: TrustError.self) { try secrets.consume(migrationID: "m2", presented: one.secret) }
        // A wrong guess does not burn the real secret (only trusted peers can guess at all).
        try secrets.consume(migrationID: "m2", presented: two.secret)
        try secrets.consume(migrationID: "m1", presented: one.secret)
        #expect(throws: (any Error).self) { try secrets.issue(migrationID: "") }
    }

    @Test func expiredAndForeignPeerSecretsAreRefused() throws {
        let secrets = MigrationSecrets()
        let start = Date()
        let short = try secrets.issue(migrationID: "m1", lifetime: 10, now: start)
        #expect(throws: TrustError.self) {
            try secrets.consume(migrationID: "m1", presented: short.secret, now: start.addingTimeInterval(11))
        }
        #expect(throws: TrustError.self) { try secrets.consume(migrationID: "m1", presented: short.secret, now: start) }

        let bound = try secrets.issue(migrationID: "m2", peerFingerprint: "aa")
        let stranger = #expect(throws: TrustError.self) {
            try secrets.consume(migrationID: "m2", presented: bound.secret, peerFingerprint: "bb")
        }
        #expect(stranger?.error.message.contains("other than") == true)
        try secrets.consume(migrationID: "m2", presented: bound.secret, peerFingerprint: "aa")

        let revoked = try secrets.issue(migrationID: "m3")
        secrets.revoke(migrationID: "m3")
        #expect(throws: TrustError.self) { try secrets.consume(migrationID: "m3", presented: revoked.secret) }
    }

    @Test func constantTimeComparison() {
        #expect(SecretBytes.constantTimeEquals([1, 2, 3], [1, 2, 3]))
        #expect(!SecretBytes.constantTimeEquals([1, 2, 3], [1, 2, 4]))
        #expect(!SecretBytes.constantTimeEquals([1, 2, 3], [1, 2]))
    }
}
