import API
import Foundation
import GodwitCore

/// The `trust` and `remote` verbs (routes in Sources/Daemon/TrustRoutes.swift).
extension GodwitClient {
    public func trustEntries() async throws -> [TrustEntryInfo] { try await call(.GET, "/1.0/trust") }

    public func createTrustToken(_ request: TrustTokenRequest) async throws -> TrustTokenInfo {
        try await call(.POST, "/1.0/trust/tokens", body: request)
    }

    @discardableResult
    public func removeTrust(_ nameOrFingerprint: String) async throws -> TrustEntryInfo {
        try await call(.DELETE, "/1.0/trust/" + Self.escape(nameOrFingerprint))
    }

    public func remotes() async throws -> [RemoteInfo] { try await call(.GET, "/1.0/remotes") }

    /// The daemon itself joins the remote (its identity is the one that gets trusted).
    public func addRemote(_ request: RemoteAddRequest) async throws -> RemoteInfo {
        try await call(.POST, "/1.0/remotes", body: request)
    }

    /// The remote's `GET /1.0`, fetched by the daemon over mutual TLS with its pin.
    public func remoteLink(_ name: String) async throws -> PeerLinkReport {
        try await call(.GET, "/1.0/remotes/\(name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? name)/link")
    }

    public func remoteServer(_ name: String) async throws -> PeerServerInfo {
        try await call(.GET, "/1.0/remotes/" + Self.escape(name) + "/server")
    }

    @discardableResult
    public func removeRemote(_ name: String) async throws -> RemoteInfo {
        try await call(.DELETE, "/1.0/remotes/" + Self.escape(name))
    }
}
