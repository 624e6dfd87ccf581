import API
import Foundation
import GodwitCore
import Hummingbird
import Trust

/// The CLI's `trust` and `remote` verbs, on the unix socket:
///
///     GET    /1.0/trust                   trusted clients and pending tokens  [TrustEntryInfo]
///     POST   /1.0/trust/tokens            TrustTokenRequest -> TrustTokenInfo (the token to hand out)
///     DELETE /1.0/trust/:name             name or fingerprint (prefix)        -> TrustEntryInfo
///     GET    /1.0/remotes                 [RemoteInfo]
///     POST   /1.0/remotes                 RemoteAddRequest -> RemoteInfo (this daemon enrolls with the remote)
///     GET    /1.0/remotes/:name/server    PeerServerInfo, asked live over mutual TLS (a reachability check)
///     DELETE /1.0/remotes/:name           -> RemoteInfo
///
/// All need the HTTPS listener (tokens name its address, remotes are dialled with its
/// identity); without `--https` they answer 400 saying how to start godwitd.
enum TrustRoutes {
    static func add(to router: Router<BasicRequestContext>, daemon: DaemonContext) {
        router.get("/1.0/trust") { _, _ in try APIRoutes.sync(try daemon.requireTrust().trustEntries()) }
        router.post("/1.0/trust/tokens") { request, _ in
            let trust = try daemon.requireTrust()
            let body = try await APIRoutes.decode(TrustTokenRequest.self, request)
            return try APIRoutes.sync(try trust.createToken(body, listenAddresses: daemon.peerAddresses))
        }
        router.delete("/1.0/trust/:name") { _, context in
            let trust = try daemon.requireTrust()
            return try APIRoutes.sync(try trust.removeTrust(try context.parameters.require("name")))
        }

        router.get("/1.0/remotes") { _, _ in try APIRoutes.sync(try daemon.requireTrust().remoteList()) }
        router.post("/1.0/remotes") { request, _ in
            let trust = try daemon.requireTrust()
            let body = try await APIRoutes.decode(RemoteAddRequest.self, request)
            do {
                return try APIRoutes.sync(try await trust.addRemote(body))
            } catch let error as GodwitError {
                // Enrollment failures (unreachable, pin mismatch, expired token) are about the
                // request, not a daemon fault; the context says which remote.
                throw RequestError.badRequest(error.with("remote", body.name))
            }
        }
        router.get("/1.0/remotes/:name/server") { _, context in
            let trust = try daemon.requireTrust()
            let client = try trust.client(for: try context.parameters.require("name"))
            do {
                let info = try await client.call(.GET, "/1.0", as: PeerServerInfo.self)
                try await client.shutdown()
                return try APIRoutes.sync(info)
            } catch {
                try? await client.shutdown()
                // A refusal (403: the remote no longer trusts us) keeps its status; an
                // unreachable remote is a 502, not this daemon's fault.
                if let error = error as? GodwitError { throw RequestError(502, error) }
                throw error
            }
        }
        router.get("/1.0/remotes/:name/link") { _, context in
            try APIRoutes.sync(try await PeerLink.check(daemon, remote: try context.parameters.require("name")))
        }
        router.delete("/1.0/remotes/:name") { _, context in
            let trust = try daemon.requireTrust()
            return try APIRoutes.sync(try trust.removeRemote(try context.parameters.require("name")))
        }
    }
}

extension DaemonContext {
    /// The trust layer, or the error every trust/remote route answers without `--https`.
    public func requireTrust() throws -> TrustLayer {
        guard let trust else {
            throw RequestError.badRequest(GodwitError(
                "this daemon has no HTTPS listener; start godwitd with --https ADDRESS:PORT",
                hint: "trust and remotes are for daemon-to-daemon HTTPS, e.g. `godwitd --https 10.77.0.11:8443` (`godwit lab up` does this for lab hosts)"))
        }
        return trust
    }

    /// "ADDR:PORT" where peers reach this daemon, for join tokens (none for 0.0.0.0).
    public var peerAddresses: [String] {
        guard let https = options.https, !https.isUnspecified else { return [] }
        return [https.description]
    }
}
