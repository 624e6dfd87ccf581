import Foundation
import Testing
@testable import Trust

@Suite struct JoinTokenTests {
    let serverFingerprint = String(repeating: "ab", count: 32)

    func peer(_ name: String) throws -> PeerCertificate {
        try PeerCertificate(pem: try HostIdentity.generate(hostName: name).certificatePEM)
    }

    @Test func encodesAndDecodesAsBase64URLJSON() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint,
                                          addresses: ["10.77.0.2:8443", "[fd00::2]:8443"])
        let text = try token.encoded()
        #expect(!text.contains("=") && !text.contains("+") && !text.contains("/"))
        let json = try #require(Base64URL.decode(text))
        let object = try #require(try JSONSerialization.jsonObject(with: json) as? [String: Any])
        #expect(object["client_name"] as? String == "h1")
        #expect(object["fingerprint"] as? String == serverFingerprint)
        let decoded = try JoinToken.decode(text)
        #expect(decoded.addresses == ["10.77.0.2:8443", "[fd00::2]:8443"])
        #expect(decoded.secret == token.secret)
        #expect(Base64URL.decode(decoded.secret)?.count == 32)
        #expect(abs(decoded.expiresAt.timeIntervalSince(token.expiresAt)) < 1)
        #expect(abs(token.expiresAt.timeIntervalSinceNow - 3600) < 5)
    }

    @Test func theServerKeepsOnlyTheSecretsHash() throws {
        let storage = MemoryTrustStorage()
        let store = try TrustStore(storage: storage)
        let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        let saved = storage.saved.withLockedValue { $0 }
        #expect(saved.tokens.count == 1)
        let bytes = try #require(Base64URL.decode(token.secret))
        #expect(saved.tokens[0].secretHash == Fingerprint.hex(SecretBytes.hash(bytes)))
        #expect(!saved.tokens[0].secretHash.contains(token.secret))
    }

    @Test func aTokenWorksOnceOnly() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        let client = try peer("h1")
        let entry = try store.enroll(secret: token.secret, peer: client)
        #expect(entry.name == "h1" && entry.fingerprint == client.fingerprint)
        #expect(store.trusted(fingerprint: client.fingerprint)?.name == "h1")
        #expect(store.pendingTokens().isEmpty)
        let again = #expect(throws: TrustError.self) { try store.enroll(secret: token.secret, peer: try peer("thief")) }
        #expect(again?.status == 403)
        #expect(again?.error.message.contains("already used") == true)
        #expect(store.certificates().count == 1)
    }

    @Test func concurrentUsesOfOneTokenLetExactlyOneIn() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        let peers = try (0..<8).map { try peer("p\($0)") }
        let successes = await withTaskGroup(of: Bool.self) { group in
            for candidate in peers {
                group.addTask { (try? store.enroll(secret: token.secret, peer: candidate)) != nil }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        #expect(successes == 1)
        #expect(store.certificates().count == 1)
    }

    @Test func anExpiredTokenIsRefusedAndBurned() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let start = Date()
        let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"],
                                          lifetime: 60, now: start)
        #expect(store.pendingTokens(now: start.addingTimeInterval(59)).count == 1)
        #expect(store.pendingTokens(now: start.addingTimeInterval(61)).isEmpty)
        let expired = #expect(throws: TrustError.self) {
            try store.enroll(secret: token.secret, peer: try peer("h1"), now: start.addingTimeInterval(61))
        }
        #expect(expired?.status == 403)
        #expect(expired?.error.message.contains("expired") == true)
        // Burned: not even an earlier clock makes it usable again.
        #expect(throws: TrustError.self) { try store.enroll(secret: token.secret, peer: try peer("h1"), now: start) }
        #expect(store.certificates().isEmpty)
        #expect(try JoinToken.decode(token.encoded()).isExpired(at: start.addingTimeInterval(61)))
    }

    @Test func lifetimesOutOfRangeAreBadRequests() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        for lifetime in [0, -1, .nan, .infinity, 1e300, TrustStore.maxTokenLifetime + 1] {
            let error = #expect(throws: TrustError.self, "\(lifetime)") {
                try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: [], lifetime: lifetime)
            }
            #expect(error?.status == 400 && error?.error.message.contains("lifetime must be from 0 to 2592000 s") == true)
        }
        #expect(store.pendingTokens().isEmpty)
    }

    @Test func tamperedTokensAreRejected() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        let text = try token.encoded()

        // Not base64url, or truncated: the decoder says so with a hint.
        #expect(throws: (any Error).self) { try JoinToken.decode("not a token!") }
        #expect(throws: (any Error).self) { try JoinToken.decode(String(text.dropLast(10))) }
        // A changed secret (same length) is unknown to the server.
        var forged = token
        var secretBytes = Array(Base64URL.decode(token.secret)!)
        secretBytes[0] ^= 0x01
        forged.secret = Base64URL.encode(secretBytes)
        let decodedForgery = try JoinToken.decode(try forged.encoded())
        let refused = #expect(throws: TrustError.self) { try store.enroll(secret: decodedForgery.secret, peer: try peer("x")) }
        #expect(refused?.status == 403)
        // A secret of the wrong length never reaches the comparison.
        forged.secret = Base64URL.encode([UInt8](repeating: 7, count: 16))
        #expect(throws: (any Error).self) { try JoinToken.decode(try forged.encoded()) }
        // A malformed fingerprint is caught when decoding.
        forged = token
        forged.fingerprint = "abc"
        #expect(throws: (any Error).self) { try JoinToken.decode(try forged.encoded()) }
        // The real token still works after all that.
        #expect(try store.enroll(secret: token.secret, peer: try peer("h1")).name == "h1")
    }

    @Test func namesAreUniqueAndValidated() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        _ = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        #expect(throws: TrustError.self) {
            try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        }
        #expect(throws: (any Error).self) {
            try store.createToken(clientName: "bad name/with:colon", serverFingerprint: serverFingerprint, addresses: ["a:1"])
        }
        #expect(try store.revokeToken(clientName: "h1"))
        #expect(store.pendingTokens().isEmpty)
        #expect(try !store.revokeToken(clientName: "h1"))
    }

    @Test func removeByNameOrFingerprintPrefix() throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let a = try peer("a"), b = try peer("b")
        try store.add(a, name: "a")
        try store.add(b, name: "b")
        #expect(try store.remove("a").fingerprint == a.fingerprint)
        #expect(try store.remove(String(b.fingerprint.prefix(12)).uppercased()).name == "b")
        let missing = #expect(throws: TrustError.self) { try store.remove("a") }
        #expect(missing?.status == 404)
        #expect(store.certificates().isEmpty)
    }

    @Test func persistsToJSONAndSurvivesAFailedSave() throws {
        let dir = try TemporaryDirectory("truststore")
        defer { dir.remove() }
        let client = try peer("h1")
        do {
            let store = try TrustStore(stateDir: dir.url)
            let token = try store.createToken(clientName: "h1", serverFingerprint: serverFingerprint, addresses: ["a:1"])
            _ = try store.createToken(clientName: "h2", serverFingerprint: serverFingerprint, addresses: ["a:1"])
            try store.enroll(secret: token.secret, peer: client)
        }
        let file = dir.url.appendingPathComponent("trust.json")
        let mode = try FileManager.default.attributesOfItem(atPath: file.path)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        let reloaded = try TrustStore(stateDir: dir.url)
        #expect(reloaded.trusted(fingerprint: client.fingerprint)?.name == "h1")
        #expect(reloaded.pendingTokens().map(\.clientName) == ["h2"])

        // A save that fails changes nothing in memory either.
        let storage = MemoryTrustStorage()
        let store = try TrustStore(storage: storage)
        storage.failNextSave.withLockedValue { $0 = true }
        #expect(throws: (any Error).self) { try store.add(client, name: "h1") }
        #expect(store.trusted(fingerprint: client.fingerprint) == nil)
    }
}
