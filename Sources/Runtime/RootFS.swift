import Foundation
import GodwitCore

/// A container's own root filesystem, made from a shared image directory.
/// Overlay (lower = image, upper/work in the container's directory) is the default:
/// instant, cheap, and CRIU dumps and restores containers on it (host-facts.md).
/// Copy is for images on filesystems overlay can't stack on.
public struct RootFS: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case overlay, copy }

    public let image: String
    /// The container's state directory; the rootfs lives at `<directory>/rootfs`.
    public let directory: String
    public let kind: Kind
    /// An unprivileged container's map: the image is seen through an idmapped mount and the
    /// container's own files are stored shifted (docs/unprivileged.md, "Root filesystem").
    public let idmap: IdMap?

    public init(image: String, directory: String, kind: Kind, idmap: IdMap? = nil) {
        self.image = image
        self.directory = directory
        self.kind = kind
        self.idmap = idmap
    }

    enum CodingKeys: String, CodingKey { case image, directory, kind, idmap }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        image = try c.decode(String.self, forKey: .image)
        directory = try c.decode(String.self, forKey: .directory)
        kind = try c.decode(Kind.self, forKey: .kind)
        idmap = try c.decodeIfPresent(IdMap.self, forKey: .idmap)
    }

    /// The container's `/` as the host sees it (the overlay's merged view when mounted).
    public var path: String { directory + "/rootfs" }
    /// Where the container's own changes are (overlay only): what a migration must copy.
    public var upperPath: String { directory + "/upper" }
    var workPath: String { directory + "/work" }
    /// The image through the idmapped mount: the overlay's lower layer when there is a map.
    var lowerPath: String { directory + "/lower" }

    /// Creates (or, after a daemon restart, re-mounts) the rootfs.
    /// `spawnHelper` makes the idmapped mount of an unprivileged container's image.
    public func prepare(spawnHelper: String = GodwitPaths.sibling("godwit-spawn")) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: image, isDirectory: &isDir), isDir.boolValue else {
            throw GodwitError("image directory \(image) does not exist")
        }
        let fm = FileManager.default
        switch kind {
        case .overlay:
            for dir in [path, upperPath, workPath] { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            guard !isMounted(path) else { return }
            var lower = image
            if let idmap {
                try mountIdmappedImage(idmap, spawnHelper: spawnHelper)
                lower = lowerPath
            }
            // nfs_export (which needs index): overlay then opens file handles, which CRIU
            // needs to find the files behind inotify watches (dbus-daemon's, systemd's);
            // without it their dump fails with "fsnotify: Can't dump that handle".
            let options = "lowerdir=\(lower),upperdir=\(upperPath),workdir=\(workPath),index=on,nfs_export=on"
            // No setuid binaries and no device nodes from the image or the container's own
            // files: what runs as root inside gains nothing over the host through them. The
            // container's /dev is a tmpfs of its own (godwit-spawn), and the bind of this
            // mount that becomes its / keeps both flags, also when CRIU restores into it.
            guard mount("overlay", path, "overlay", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
                throw GodwitError.errno("mount overlay on \(path)",
                                        hint: "is \(directory) on a filesystem overlay accepts as upper (ext4, xfs, tmpfs)? else use copy")
            }
        case .copy:
            guard idmap == nil else {
                throw GodwitError("an unprivileged container needs an overlay rootfs", hint: "copy rootfs are for privileged containers (security.privileged=true)")
            }
            guard !fm.fileExists(atPath: path) else { return }
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // cp -a keeps owners, modes, device nodes and hard links, which FileManager doesn't.
            try Command.check(["cp", "-a", image, path + ".partial"])
            try fm.moveItem(atPath: path + ".partial", toPath: path)
        }
    }

    public var isMounted: Bool { isMounted(path) }

    func isMounted(_ point: String) -> Bool {
        MountInfo.current().contains { $0.mountPoint == point }
    }

    /// The image, shared by every container and owned by 0 on disk, appears owned by the
    /// map's base through `lower` (godwit-spawn idmap). The container's upper and work dirs
    /// belong to its root, so what it creates lands shifted on disk: a file root makes
    /// inside is owned by the base on the host, and rsync --numeric-ids moves it as it is.
    /// The overlay itself is mounted by host root, which keeps index and nfs_export working
    /// (over an idmapped upper overlay silently goes read-only: spike 17).
    private func mountIdmappedImage(_ idmap: IdMap, spawnHelper: String) throws {
        let fm = FileManager.default
        try fm.createDirectory(atPath: lowerPath, withIntermediateDirectories: true)
        for dir in [upperPath, workPath] {
            var info = stat()
            guard stat(dir, &info) == 0 else { throw GodwitError.errno("stat \(dir)") }
            // Only the top: what is below was made by the container itself (already shifted).
            if info.st_uid != idmap.hostBase || info.st_gid != idmap.hostBase {
                guard chown(dir, idmap.hostBase, idmap.hostBase) == 0 else { throw GodwitError.errno("chown \(dir)") }
            }
        }
        if !isMounted(lowerPath) {
            try Command.check([spawnHelper, "idmap", "--map", idmap.spawnArgument, image, lowerPath])
        }
    }

    /// Unmounts the overlay and the idmapped image below it (the files stay).
    public func unmount() throws {
        guard kind == .overlay else { return }
        // The container's mount namespace had its own copy of these mounts; only the
        // host's are left once the container is gone, and nothing should hold them.
        for point in [path, lowerPath] {
            // Bounded: a mount stacked by an interrupted prepare comes off too.
            for _ in 0..<8 where isMounted(point) {
                guard umount2(point, 0) == 0 || errno == EINVAL else {
                    throw GodwitError.errno("umount \(point)", hint: "is a shell or process still inside it?")
                }
            }
        }
    }

    /// Unmounts and deletes everything the rootfs used; the image is untouched.
    public func remove() throws {
        try unmount()
        // Never rm -rf the lower mount point: were the idmapped image still attached there,
        // the shared image would go (it is on the same file system). It is an empty dir.
        if FileManager.default.fileExists(atPath: lowerPath) {
            guard !isMounted(lowerPath), rmdir(lowerPath) == 0 else {
                throw GodwitError.errno("removing \(lowerPath)", hint: "is the image still mounted there?")
            }
        }
        for dir in [path, upperPath, workPath, path + ".partial"] where FileManager.default.fileExists(atPath: dir) {
            // FileManager stops at unreadable overlay work dirs (d--------- work/work).
            try Command.check(["rm", "-rf", "--one-file-system", dir])
        }
    }
}
