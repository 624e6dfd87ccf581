import Foundation
import GodwitCore
import NIOConcurrencyHelpers

/// Another godwitd this host may talk to (as a client, e.g. to send it a container).
public struct Remote: Codable, Sendable, Equatable {
    public var name: String
    /// "https://ADDR:PORT"
    public var url: String
    /// The server certificate we accept from it, and nothing else.
    public var fingerprint: String
    /// The pinned certificate itself: TLS needs it as the only trust root (the token carried
    /// only its fingerprint; `RemoteEnrollment` fetched it and checked it matches).
    public var certificatePEM: String
    /// What the server's certificate calls itself (its host name); informational.
    public var serverName: String?
    public var addedAt: Date

    public init(name: String, url: String, fingerprint: String, certificatePEM: String,
                serverName: String? = nil, addedAt: Date = Date()) {
        self.name = name; self.url = url; self.fingerprint = fingerprint; self.certificatePEM = certificatePEM
        self.serverName = serverName; self.addedAt = addedAt
    }

    enum CodingKeys: String, CodingKey {
        case name, url, fingerprint
        case certificatePEM = "certificate"
        case serverName = "server_name"
        case addedAt = "added_at"
    }
}

/// The remotes of this host, persisted as `remotes.json` (atomic writes). Thread-safe: the
/// daemon reads it from many requests while the CLI adds or removes entries.
public final class RemoteList: Sendable {
    public let file: URL
    let remotes: NIOLockedValueBox<[Remote]>

    public init(file: URL) throws {
        self.file = file
        var loaded: [Remote] = []
        if let data = try AtomicFile.read(file) {
            do {
                loaded = try APICodingLite.decoder.decode([Remote].self, from: data)
            } catch {
                throw GodwitError("the remote list \(file.path) is damaged: \(error)",
                                  hint: "restore it from a backup, or move it away and add the remotes again")
            }
        }
        remotes = NIOLockedValueBox(loaded)
    }

    public convenience init(stateDir: URL) throws {
        try self.init(file: stateDir.appendingPathComponent("remotes.json"))
    }

    public func list() -> [Remote] { remotes.withLockedValue { $0 }.sorted { $0.name < $1.name } }

    public func get(_ name: String) throws -> Remote {
        guard let remote = remotes.withLockedValue({ $0.first { $0.name == name } }) else {
            throw TrustError.notFound(GodwitError("no remote named '\(name)'",
                                                  hint: "`godwit remote list` shows them; `godwit remote add \(name) https://ADDR:PORT --token T` adds one"))
        }
        return remote
    }

    /// Adds a remote; a name already in use is a conflict (re-adding means removing first,
    /// so a typo never silently re-points a remote at another server).
    public func add(_ remote: Remote) throws {
        try TrustName.validate(remote.name, what: "remote name")
        _ = try Fingerprint.parse(remote.fingerprint)
        try remotes.withLockedValue { current in
            if current.contains(where: { $0.name == remote.name }) {
                throw TrustError.conflict(GodwitError("a remote named '\(remote.name)' already exists",
                                                      hint: "`godwit remote remove \(remote.name)` first, or choose another name"))
            }
            let next = current + [remote]
            try save(next)
            current = next
        }
    }

    @discardableResult
    public func remove(_ name: String) throws -> Remote {
        try remotes.withLockedValue { current in
            guard let remote = current.first(where: { $0.name == name }) else {
                throw TrustError.notFound(GodwitError("no remote named '\(name)'", hint: "`godwit remote list` shows them"))
            }
            let next = current.filter { $0.name != name }
            try save(next)
            current = next
            return remote
        }
    }

    func save(_ list: [Remote]) throws {
        try AtomicFile.write(try APICodingLite.encoder.encode(list.sorted { $0.name < $1.name }), to: file, mode: 0o600)
    }
}
