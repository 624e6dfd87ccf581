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
        daemon.migrations.addPeerRoutes(to: router)
    }
}
