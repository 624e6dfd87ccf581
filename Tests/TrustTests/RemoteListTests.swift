import Foundation
import Testing
@testable import Trust

@Suite struct RemoteListTests {
    @Test func addListRemovePersist() throws {
        let dir = try TemporaryDirectory("remotes")
        defer { dir.remove() }
        let server = try HostIdentity.generate(hostName: "h2")
        let remote = Remote(name: "h2", url: "https://10.77.0.2:8443", fingerprint: server.fingerprint,
                            certificatePEM: server.certificatePEM, serverName: "h2")
        do {
            let list = try RemoteList(stateDir: dir.url)
            try list.add(remote)
            let duplicate = #expect(throws: TrustError.self) { try list.add(remote) }
            #expect(duplicate?.status == 409)
        }
        let reloaded = try RemoteList(stateDir: dir.url)
        #expect(reloaded.list().map(\.name) == ["h2"])
        #expect(try reloaded.get("h2").fingerprint == server.fingerprint)
        #expect(try reloaded.remove("h2").name == "h2")
        #expect(throws: TrustError.self) { try reloaded.get("h2") }
        #expect(try RemoteList(stateDir: dir.url).list().isEmpty)
    }

    @Test func endpointsParse() throws {
        let plain = try RemoteEnrollment.Endpoint(url: "https://10.0.0.1")
        #expect(plain.port == 8443 && plain.host == "10.0.0.1" && plain.url == "https://10.0.0.1:8443")
        let v6 = try RemoteEnrollment.Endpoint(url: "https://[fd00::2]:9443")
        #expect(v6.host == "fd00::2" && v6.port == 9443 && v6.url == "https://[fd00::2]:9443")
        #expect(throws: (any Error).self) { try RemoteEnrollment.Endpoint(url: "http://10.0.0.1") }
    }

    @Test func fingerprintsNormalize() {
        let hex = String(repeating: "ab", count: 32)
        #expect(Fingerprint.normalize(hex.uppercased()) == hex)
        #expect(Fingerprint.normalize(stride(from: 0, to: 64, by: 2).map { _ in "AB" }.joined(separator: ":")) == hex)
        #expect(Fingerprint.normalize("abc") == nil)
    }
}
