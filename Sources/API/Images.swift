import Foundation

/// `GET /1.0/images/{alias}`.
public struct ImageInfo: Codable, Sendable, Equatable {
    public var alias: String
    public var fingerprint: String
    public var description: String
    public var sizeBytes: UInt64
    public var createdAt: Date
    /// What the image is, for `image list`: from an LXD image's metadata.yaml, else from
    /// the rootfs (`/etc/os-release`'s ID and VERSION_CODENAME, dpkg's architecture).
    /// Empty when unknown. Architecture uses Debian's names (amd64, arm64).
    public var os: String
    public var release: String
    public var architecture: String

    public init(alias: String, fingerprint: String, description: String, sizeBytes: UInt64, createdAt: Date,
                os: String = "", release: String = "", architecture: String = "") {
        self.alias = alias; self.fingerprint = fingerprint; self.description = description
        self.sizeBytes = sizeBytes; self.createdAt = createdAt
        self.os = os; self.release = release; self.architecture = architecture
    }

    enum CodingKeys: String, CodingKey {
        case alias, fingerprint, description, os, release, architecture
        case sizeBytes = "size"
        case createdAt = "created_at"
    }

    /// Tolerates answers from daemons that predate os, release and architecture.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        alias = try c.decode(String.self, forKey: .alias)
        fingerprint = try c.decode(String.self, forKey: .fingerprint)
        description = try c.decode(String.self, forKey: .description)
        sizeBytes = try c.decode(UInt64.self, forKey: .sizeBytes)
        createdAt = try c.decode(Date.self, forKey: .createdAt)
        os = try c.decodeIfPresent(String.self, forKey: .os) ?? ""
        release = try c.decodeIfPresent(String.self, forKey: .release) ?? ""
        architecture = try c.decodeIfPresent(String.self, forKey: .architecture) ?? ""
    }
}

/// `POST /1.0/images`: unpack an image that is on the daemon's host (the CLI talks to a
/// local daemon over its unix socket, so a path is enough and avoids an upload).
/// `tarball` is a plain rootfs tarball or a unified LXD image (metadata.yaml + rootfs/);
/// with `rootfs` set it is a split LXD image: `tarball` the metadata, `rootfs` a tarball
/// or squashfs of the root filesystem (LXD's order: metadata first).
public struct ImageImportRequest: Codable, Sendable, Equatable {
    public var tarball: String
    public var rootfs: String?
    public var alias: String
    public init(tarball: String, rootfs: String? = nil, alias: String) {
        self.tarball = tarball; self.rootfs = rootfs; self.alias = alias
    }
}

/// `POST /1.0/images/build`: build an image from a distribution's packages.
public struct ImageBuildRequest: Codable, Sendable, Equatable {
    /// Only "debian" so far.
    public var distribution: String
    public var release: String
    /// Extra packages; systemd-sysv (the init) is always installed.
    public var include: [String]
    public var alias: String
    /// Rebuild even when the cache has this recipe.
    public var refresh: Bool

    public init(distribution: String = "debian", release: String = "bookworm", include: [String] = [],
                alias: String, refresh: Bool = false) {
        self.distribution = distribution; self.release = release; self.include = include
        self.alias = alias; self.refresh = refresh
    }
}

/// `POST /1.0/images/{alias}/export`: write a unified LXD image tarball to `path` on the
/// daemon's host; the suffix picks the compression (.tar, .tar.gz, .tar.xz, .tar.zst).
public struct ImageExportRequest: Codable, Sendable, Equatable {
    public var path: String
    public init(path: String) { self.path = path }
}

/// The image every host can build itself, from the host's static busybox.
public enum BuiltinImage {
    public static let busybox = "busybox"
}
