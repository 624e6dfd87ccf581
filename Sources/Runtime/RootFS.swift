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

    public init(image: String, directory: String, kind: Kind) {
        self.image = image
        self.directory = directory
        self.kind = kind
    }

    /// The container's `/` as the host sees it (the overlay's merged view when mounted).
    public var path: String { directory + "/rootfs" }
    /// Where the container's own changes are (overlay only): what a migration must copy.
    public var upperPath: String { directory + "/upper" }
    var workPath: String { directory + "/work" }

    /// Creates (or, after a daemon restart, re-mounts) the rootfs.
    public func prepare() throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: image, isDirectory: &isDir), isDir.boolValue else {
            throw GodwitError("image directory \(image) does not exist")
        }
        let fm = FileManager.default
        switch kind {
        case .overlay:
            for dir in [path, upperPath, workPath] { try fm.createDirectory(atPath: dir, withIntermediateDirectories: true) }
            guard !isMounted else { return }
            // nfs_export (which needs index): overlay then opens file handles, which CRIU
            // needs to find the files behind inotify watches (dbus-daemon's, systemd's);
            // without it their dump fails with "fsnotify: Can't dump that handle".
            let options = "lowerdir=\(image),upperdir=\(upperPath),workdir=\(workPath),index=on,nfs_export=on"
            // No setuid binaries and no device nodes from the image or the container's own
            // files: what runs as root inside gains nothing over the host through them. The
            // container's /dev is a tmpfs of its own (godwit-spawn), and the bind of this
            // mount that becomes its / keeps both flags, also when CRIU restores into it.
            guard mount("overlay", path, "overlay", UInt(MS_NOSUID | MS_NODEV), options) == 0 else {
                throw GodwitError.errno("mount overlay on \(path)",
                                        hint: "is \(directory) on a filesystem overlay accepts as upper (ext4, xfs, tmpfs)? else use copy")
            }
        case .copy:
            guard !fm.fileExists(atPath: path) else { return }
            try fm.createDirectory(atPath: directory, withIntermediateDirectories: true)
            // cp -a keeps owners, modes, device nodes and hard links, which FileManager doesn't.
            try Command.check(["cp", "-a", image, path + ".partial"])
            try fm.moveItem(atPath: path + ".partial", toPath: path)
        }
    }

    public var isMounted: Bool {
        guard let mountinfo = HostEnvironment.read("/proc/self/mountinfo") else { return false }
        let escaped = path.replacingOccurrences(of: " ", with: "\\040")
        return mountinfo.split(separator: "\n").contains { $0.split(separator: " ").dropFirst(4).first.map(String.init) == escaped }
    }

    /// Unmounts and deletes everything the rootfs used; the image is untouched.
    public func remove() throws {
        if kind == .overlay, isMounted {
            // The container's mount namespace had its own copy of this mount; only the
            // host's is left once the container is gone, and nothing should hold it.
            guard umount2(path, 0) == 0 || errno == EINVAL else {
                throw GodwitError.errno("umount \(path)", hint: "is a shell or process still inside it?")
            }
        }
        for dir in [path, upperPath, workPath, path + ".partial"] where FileManager.default.fileExists(atPath: dir) {
            // FileManager stops at unreadable overlay work dirs (d--------- work/work).
            try Command.check(["rm", "-rf", "--one-file-system", dir])
        }
    }
}
