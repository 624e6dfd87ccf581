import AsyncHTTPClient
import Foundation
import NIOCore
import Testing
@testable import Trust

/// Real sockets, real TLS: the scenarios of the trust model, each against a fresh server.
@Suite(.serialized) struct MutualTLSEndToEndTests {
    let server: HostIdentity
    let client: HostIdentity

    init() throws {
        server = try HostIdentity.generate(hostName: "server", addresses: ["127.0.0.1"])
        client = try HostIdentity.generate(hostName: "client")
    }

    /// The remote entry a client would have after pinning `pinned` at `url`.
    func remote(_ url: String, pinning pinned: HostIdentity) -> Remote {
        Remote(name: "server", url: url, fingerprint: pinned.fingerprint, certificatePEM: pinned.certificatePEM)
    }

    @Test func unenrolledClientGets403ThenEnrollsAndGets200() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "client", serverFingerprint: server.fingerprint, addresses: [])
        let dir = try TemporaryDirectory("e2e-remotes")
        defer { dir.remove() }
        try await TLSTestServer.run(identity: server, store: store) { [server, client] url in
            // (a) Not enrolled yet: TLS works (the server's certificate is pinned) but HTTP says 403.
            try await PeerClient.with(remote(url, pinning: server), identity: client) { peer in
                let (status, body) = try await peer.send(.GET, "/1.0/ping")
                #expect(status == 403)
                #expect(String(decoding: body, as: UTF8.self).contains("not trusted"))
                #expect(String(decoding: body, as: UTF8.self).contains("godwit trust add"))
            }
            // (b) Enroll the way `godwit remote add` will: fetch + pin, then POST the secret.
            let remotes = try RemoteList(stateDir: dir.url)
            let joined = try await RemoteEnrollment.join(name: "server", url: url, token: JoinToken.decode(token.encoded()),
                                                         identity: client, remotes: remotes)
            #expect(joined.fingerprint == server.fingerprint)
            #expect(joined.serverName == "server")
            #expect(remotes.list().map(\.name) == ["server"])
            #expect(store.trusted(fingerprint: client.fingerprint)?.name == "client")
            try await PeerClient.with(joined, identity: client) { peer in
                let pong = try await peer.call(.GET, "/1.0/ping", as: [String: String].self)
                #expect(pong["pong"] == "client")
            }
        }
    }

    @Test func aTokenCannotBeUsedTwice() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "client", serverFingerprint: server.fingerprint, addresses: [])
        let intruder = try HostIdentity.generate(hostName: "intruder")
        try await TLSTestServer.run(identity: server, store: store) { [server, client] url in
            _ = try await RemoteEnrollment.join(name: "server", url: url, token: token, identity: client, remotes: nil)
            // (c) Another host replays the same token: refused, and it stays untrusted.
            let replay = await #expect(throws: TrustError.self) {
                _ = try await RemoteEnrollment.join(name: "server", url: url, token: token, identity: intruder, remotes: nil)
            }
            #expect(replay?.status == 403)
            #expect(store.trusted(fingerprint: intruder.fingerprint) == nil)
            try await PeerClient.with(remote(url, pinning: server), identity: intruder) { peer in
                #expect(try await peer.send(.GET, "/1.0/ping").status == 403)
                // Enrollment by hand with the spent secret: still 403.
                let body = try JSONEncoder().encode(["secret": token.secret])
                #expect(try await peer.send(.POST, "/1.0/certificates", body: body).status == 403)
            }
        }
    }

    @Test func aClientPinningAnotherCertificateRefusesTheServer() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        try store.add(try PeerCertificate(pem: client.certificatePEM), name: "client")
        let impostor = try HostIdentity.generate(hostName: "server", addresses: ["127.0.0.1"])
        let token = try store.createToken(clientName: "other", serverFingerprint: impostor.fingerprint,
                                          addresses: [])
        try await TLSTestServer.run(identity: server, store: store) { [client] url in
            // (d) The client expects the impostor's certificate (same CN, same SANs): the real
            // server's does not chain to it, so no request gets through, trusted client or not.
            let refused = await #expect(throws: (any Error).self) {
                try await PeerClient.with(remote(url, pinning: impostor), identity: client) { peer in
                    _ = try await peer.send(.GET, "/1.0/ping")
                }
            }
            #expect(String(describing: refused).contains("pinned"))
            // The enrollment path checks the token's fingerprint before sending the secret.
            let mismatch = await #expect(throws: (any Error).self) {
                _ = try await RemoteEnrollment.join(name: "server", url: url, token: token, identity: client, remotes: nil)
            }
            #expect(String(describing: mismatch).contains("not the one the token names"))
            #expect(store.pendingTokens().count == 1)  // the secret never left the client
        }
    }

    @Test func removingTrustTakesEffectWithoutRestart() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        try store.add(try PeerCertificate(pem: client.certificatePEM), name: "client")
        try await TLSTestServer.run(identity: server, store: store) { [server, client] url in
            try await PeerClient.with(remote(url, pinning: server), identity: client) { peer in
                let before = try await peer.call(.GET, "/1.0/ping", as: [String: String].self)
                // (e) Same client: the next request is refused, although the TLS session
                // was accepted before the removal.
                try store.remove("client")
                let (status, body) = try await peer.send(.GET, "/1.0/ping")
                #expect(status == 403)
                #expect(String(decoding: body, as: UTF8.self).contains(client.fingerprint))
                try store.add(try PeerCertificate(pem: client.certificatePEM), name: "client")
                let after = try await peer.call(.GET, "/1.0/ping", as: [String: String].self)
                // One connection throughout: the check is per request, not per handshake.
                #expect(before["client_port"] == after["client_port"])
            }
        }
    }

    @Test func aClientWithoutCertificateIsRefused() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        let token = try store.createToken(clientName: "client", serverFingerprint: server.fingerprint, addresses: [])
        try await TLSTestServer.run(identity: server, store: store) { [server] url in
            // (f) No client certificate at all: 403 everywhere, and enrollment too (there is
            // no certificate to trust), without spending the token.
            try await PeerClient.with(remote(url, pinning: server), identity: nil) { peer in
                let (status, body) = try await peer.send(.GET, "/1.0/ping")
                #expect(status == 403)
                #expect(String(decoding: body, as: UTF8.self).contains("no client certificate"))
                let enroll = try JSONEncoder().encode(["secret": token.secret])
                #expect(try await peer.send(.POST, "/1.0/certificates", body: enroll).status == 403)
            }
            #expect(store.pendingTokens().count == 1)
            #expect(store.certificates().isEmpty)
        }
    }

    @Test func anImpostorServerIsRefusedByAPinnedClient() async throws {
        // A man in the middle with its own certificate (same CN and address as the real one).
        let impostor = try HostIdentity.generate(hostName: "server", addresses: ["127.0.0.1"])
        let impostorStore = try TrustStore(storage: MemoryTrustStorage())
        // Even if the impostor "trusts" the client, the client must not talk to it.
        try impostorStore.add(try PeerCertificate(pem: client.certificatePEM), name: "client")
        try await TLSTestServer.run(identity: impostor, store: impostorStore) { [server, client] url in
            let refused = await #expect(throws: GodwitErrorProxy.self) {
                do {
                    try await PeerClient.with(remote(url, pinning: server), identity: client) { peer in
                        _ = try await peer.send(.GET, "/1.0/ping")
                    }
                } catch { throw GodwitErrorProxy(error) }
            }
            #expect(refused?.text.contains("TLS with remote 'server' failed") == true)
        }
    }

    @Test func fetchingTheCertificateChecksThePin() async throws {
        let store = try TrustStore(storage: MemoryTrustStorage())
        try await TLSTestServer.run(identity: server, store: store) { [server] url in
            let endpoint = try RemoteEnrollment.Endpoint(url: url)
            let fetched = try await RemoteEnrollment.fetchCertificate(host: endpoint.host, port: endpoint.port,
                                                                      expectedFingerprint: server.fingerprint)
            #expect(fetched.fingerprint == server.fingerprint)
            let mismatch = await #expect(throws: RemoteEnrollment.PinMismatch.self) {
                _ = try await RemoteEnrollment.fetchCertificate(host: endpoint.host, port: endpoint.port,
                                                                expectedFingerprint: String(repeating: "0", count: 64))
            }
            #expect(mismatch?.presented == server.fingerprint)
        }
    }
}
