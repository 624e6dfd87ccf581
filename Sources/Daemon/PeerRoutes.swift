import API
import Foundation
import GodwitCore
import Hummingbird
import Trust

/// The daemon-to-daemon API, served on the HTTPS listener (`godwitd --https`). Every route
/// here runs behind `PeerTrustMiddleware`: the caller presented a certificate in the trust
/// store, and `context.trustedClient` says who it is. Answers use the unix socket's
/// envelopes (`APIRoutes.sync`/`async`), and thrown errors become the usual error body.
///
/// Migration adds its routes to `add(to:context:)`, e.g.
/// `router.post("/1.0/migrations") { request, ctx in ... daemon.trust!.secrets ... }`.
public enum PeerRoutes {
    public static func add(to router: Router<PeerRequestContext>, context daemon: DaemonContext) {
        router.get("/1.0") { _, context in
            try APIRoutes.sync(PeerServerInfo(version: GodwitVersion.current, name: daemon.options.hostName,
                                              fingerprint: daemon.trust?.identity.fingerprint ?? "",
                                              client: context.trustedClient?.name))
        }
        // For `godwit check --peer`: the network a moved container lands on, and bytes to
        // time the link with.
        router.get("/1.0/networks") { _, _ in try APIRoutes.sync(try daemon.networks()) }
        router.get("/1.0/link-probe") { request, _ in
            let asked = request.uri.queryParameters.get("bytes").flatMap { Int($0) } ?? PeerLink.defaultProbeBytes
            guard (1...PeerLink.maxProbeBytes).contains(asked) else {
                throw RequestError.badRequest(GodwitError("bytes must be 1...\(PeerLink.maxProbeBytes)"))
            }
            return Response(status: .ok, headers: [.contentType: "application/octet-stream"],
                            body: .init(byteBuffer: ByteBuffer(repeating: 0x5A, count: asked)))
        }
        daemon.migrations.addPeerRoutes(to: router)
    }
}

/// Measures the link to a remote for `godwit check --peer`.
enum PeerLink {
    static let defaultProbeBytes = 16 << 20
    static let maxProbeBytes = 64 << 20

    static func check(_ daemon: DaemonContext, remote name: String) async throws -> PeerLinkReport {
        let trust = try daemon.requireTrust()
        let client = try trust.client(for: name)
        defer { Task { try? await client.shutdown() } }
        do {
            var trips: [Double] = []
            for _ in 0..<5 {
                let t = DispatchTime.now().uptimeNanoseconds
                _ = try await client.call(.GET, "/1.0", as: PeerServerInfo.self)
                trips.append(Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6)
            }
            let t = DispatchTime.now().uptimeNanoseconds
            let (status, body) = try await client.send(.GET, "/1.0/link-probe?bytes=\(defaultProbeBytes)")
            let seconds = max(Double(DispatchTime.now().uptimeNanoseconds - t) / 1e9, 1e-6)
            guard status == 200, body.count == defaultProbeBytes else {
                throw GodwitError("\(name) did not send the link probe (HTTP \(status), \(body.count) bytes)",
                                  hint: "is \(name) running the same Godwit version?")
            }
            let peerNetworks = try await client.call(.GET, "/1.0/networks", as: [NetworkInfo].self)
            return PeerLinkReport(remote: name, roundTripMillis: trips.sorted()[trips.count / 2],
                                  throughputMbitPerSecond: Double(body.count) * 8 / seconds / 1e6, probeBytes: body.count,
                                  local: try daemon.networks().first, peer: peerNetworks.first)
        } catch let error as GodwitError {
            throw RequestError(502, error.with("remote", name))
        }
    }
}
