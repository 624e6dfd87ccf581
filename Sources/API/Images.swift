import Foundation

/// `GET /1.0/images/{alias}`.
public struct ImageInfo: Codable, Sendable, Equatable {
    public var alias: String
    public var fingerprint: String
    public var description: String
    public var sizeBytes: UInt64
    public var createdAt: Date

    public init(alias: String, fingerprint: String, description: String, sizeBytes: UInt64, createdAt: Date) {
        self.alias = alias; self.fingerprint = fingerprint; self.description = description
        self.sizeBytes = sizeBytes; self.createdAt = createdAt
    }

    enum CodingKeys: String, CodingKey {
        case alias, fingerprint, description
        case sizeBytes = "size"
        case createdAt = "created_at"
    }
}

/// `POST /1.0/images`: unpack a rootfs tarball that is on the daemon's host (the CLI talks
/// to a local daemon over its unix socket, so a path is enough and avoids an upload).
public struct ImageImportRequest: Codable, Sendable, Equatable {
    public var tarball: String
    public var alias: String
    public init(tarball: String, alias: String) { self.tarball = tarball; self.alias = alias }
}

/// The image every host can build itself, from the host's static busybox.
public enum BuiltinImage {
    public static let busybox = "busybox"
}
