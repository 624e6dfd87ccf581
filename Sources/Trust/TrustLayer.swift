import API
import Foundation
import GodwitCore
import Hummingbird
import HummingbirdCore
import HummingbirdTLS

/// Everything godwitd needs for trust, opened once at start from its state directory:
/// `server.crt`/`server.key` (identity), `trust.json` (trusted clients, pending tokens),
/// `remotes.json` (servers we pinned) and the in-memory migration secrets.
public struct TrustLayer: Sendable {
    public let identity: HostIdentity
    public let store: TrustStore
    public let remotes: RemoteList
    public let secrets: MigrationSecrets

    public init(identity: HostIdentity, store: TrustStore, remotes: RemoteList, secrets: MigrationSecrets = MigrationSecrets()) {
        self.identity = identity; self.store = store; self.remotes = remotes; self.secrets = secrets
    }

    /// - Parameter addresses: IPs / DNS names for the certificate's subjectAltName (first start only).
    public static func open(stateDir: URL, hostName: String, addresses: [String] = []) throws -> TrustLayer {
        TrustLayer(identity: try HostIdentity.loadOrCreate(in: stateDir, hostName: hostName, addresses: addresses),
                   store: try TrustStore(stateDir: stateDir),
                   remotes: try RemoteList(stateDir: stateDir))
    }

    // MARK: HTTPS listener

    /// `Application(router: router, server: try trust.httpsServer(), configuration: .init(address: .hostname(ADDR, port: 8443)))`
    public func httpsServer() throws -> HTTPServerBuilder {
        try .tls(.http1(), configuration: try MutualTLS.serverConfiguration(identity: identity))
    }

    /// A router for the HTTPS listener with the trust check in front of every route and the
    /// enrollment endpoint added; the daemon adds its daemon-to-daemon routes to it. Add the
    /// daemon's error middleware *before* calling this if it should also shape trust errors
    /// (trust answers its own 403s either way).
    public func httpsRouter(_ router: Router<PeerRequestContext> = Router(context: PeerRequestContext.self)) -> Router<PeerRequestContext> {
        router.add(middleware: PeerTrustMiddleware(store: store))
        TrustEndpoints.addEnrollment(to: router, store: store)
        return router
    }

    // MARK: what the unix-socket routes call (CLI verbs)

    /// `trust add NAME`: the token to print. `listenAddresses` are "host:port" where this
    /// daemon's HTTPS listener is reachable (the joining host tries them in order).
    public func createToken(_ request: TrustTokenRequest, listenAddresses: [String]) throws -> TrustTokenInfo {
        let token = try store.createToken(clientName: request.name, serverFingerprint: identity.fingerprint,
                                          addresses: listenAddresses,
                                          lifetime: request.lifetime ?? TrustStore.defaultTokenLifetime)
        return TrustTokenInfo(name: token.clientName, token: try token.encoded(), expiresAt: token.expiresAt)
    }

    /// `trust list`: trusted clients, then tokens nobody has used yet.
    public func trustEntries(now: Date = Date()) -> [TrustEntryInfo] {
        store.certificates().map {
            TrustEntryInfo(name: $0.name, kind: "client", fingerprint: $0.fingerprint, since: $0.addedAt, expiresAt: nil)
        } + store.pendingTokens(now: now).map {
            TrustEntryInfo(name: $0.clientName, kind: "token", fingerprint: nil, since: $0.createdAt, expiresAt: $0.expiresAt)
        }
    }

    /// `trust remove NAME|FINGERPRINT`: a trusted client, else a pending token of that name.
    public func removeTrust(_ nameOrFingerprint: String) throws -> TrustEntryInfo {
        do {
            let removed = try store.remove(nameOrFingerprint)
            return TrustEntryInfo(name: removed.name, kind: "client", fingerprint: removed.fingerprint,
                                  since: removed.addedAt, expiresAt: nil)
        } catch let error as TrustError where error.status == 404 {
            guard let token = store.pendingTokens().first(where: { $0.clientName == nameOrFingerprint }),
                  try store.revokeToken(clientName: nameOrFingerprint) else { throw error }
            return TrustEntryInfo(name: token.clientName, kind: "token", fingerprint: nil,
                                  since: token.createdAt, expiresAt: token.expiresAt)
        }
    }

    /// `remote add NAME [URL] --token T`.
    public func addRemote(_ request: RemoteAddRequest) async throws -> RemoteInfo {
        let token = try JoinToken.decode(request.token)
        let remote = try await RemoteEnrollment.join(name: request.name, url: request.url, token: token,
                                                     identity: identity, remotes: remotes)
        return remote.info
    }

    public func remoteList() -> [RemoteInfo] { remotes.list().map(\.info) }

    /// `remote remove NAME`: forgets the pin locally (the remote still trusts us until its
    /// admin runs `trust remove` there).
    public func removeRemote(_ name: String) throws -> RemoteInfo { try remotes.remove(name).info }

    /// A client for talking to a remote; the caller must `shutdown()` it (or use `PeerClient.with`).
    public func client(for remoteName: String) throws -> PeerClient {
        try PeerClient(remote: try remotes.get(remoteName), identity: identity)
    }
}

extension Remote {
    public var info: RemoteInfo {
        RemoteInfo(name: name, url: url, fingerprint: fingerprint, serverName: serverName, addedAt: addedAt)
    }
}
