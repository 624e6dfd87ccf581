import API
import Foundation
import Testing
@testable import Trust

@Suite struct TrustLayerTests {
    @Test func cliVerbsOnTopOfTheStores() throws {
        let dir = try TemporaryDirectory("layer")
        defer { dir.remove() }
        let layer = try TrustLayer.open(stateDir: dir.url, hostName: "h2", addresses: ["10.77.0.2"])
        let info = try layer.createToken(TrustTokenRequest(name: "h1", lifetime: 120), listenAddresses: ["10.77.0.2:8443"])
        let token = try JoinToken.decode(info.token)
        #expect(token.fingerprint == layer.identity.fingerprint)
        #expect(token.addresses == ["10.77.0.2:8443"])
        #expect(layer.trustEntries().map(\.kind) == ["token"])

        let client = try PeerCertificate(pem: try HostIdentity.generate(hostName: "h1").certificatePEM)
        try layer.store.enroll(secret: token.secret, peer: client)
        #expect(layer.trustEntries().map { "\($0.kind):\($0.name)" } == ["client:h1"])

        _ = try layer.createToken(TrustTokenRequest(name: "h3"), listenAddresses: ["10.77.0.2:8443"])
        #expect(try layer.removeTrust("h3").kind == "token")
        #expect(try layer.removeTrust(String(client.fingerprint.prefix(16))).name == "h1")
        #expect(throws: TrustError.self) { try layer.removeTrust("h1") }
        #expect(layer.trustEntries().isEmpty)

        // Reopening finds the same identity.
        #expect(try TrustLayer.open(stateDir: dir.url, hostName: "h2").identity.fingerprint == layer.identity.fingerprint)
    }
}
