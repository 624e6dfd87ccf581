import API
import Foundation
import GodwitCore

/// Images that arrive with a moved container: `godwit move` to a host that lacks the
/// container's image carries the image's rootfs first (the source's "image" phase). The
/// fingerprint is the sha256 of the tarball it was imported from, which no tree can be
/// hashed back into: the received image keeps the source's fingerprint, and its description
/// says which peer it came from. Nonisolated: the image channel's thread installs it, and a
/// rename keeps each image directory complete or absent whoever else writes the store.
extension ImageStore {
    /// Free space kept beyond an incoming image's announced size (the container's own files,
    /// CRIU's images and the page store arrive next on the same disk).
    static let transferReserve: UInt64 = 256 << 20
    /// No peer announces more than this (a bound before any arithmetic on it).
    static let maxTransferBytes: UInt64 = 1 << 40
    static let stagingPrefix = ".incoming-"

    /// A fingerprint becomes a directory name: only sha256 hex (lowercase) is one.
    public nonisolated static func isFingerprint(_ text: String) -> Bool {
        text.utf8.count == 64 && text.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) }
    }

    /// The image with this fingerprint under whichever alias, if its files are here.
    public nonisolated func image(fingerprint: String) throws -> ImageRecord? {
        guard Self.isFingerprint(fingerprint), let record = try store.image(fingerprint: fingerprint) else { return nil }
        return FileManager.default.fileExists(atPath: rootfs(record).path) ? record : nil
    }

    /// An empty staging directory for an image of `bytes` (as the source announced it),
    /// refused when the disk can't hold it. Under the images directory: same file system,
    /// so the install is a rename.
    public nonisolated func stageTransfer(fingerprint: String, bytes: UInt64, hostName: String) throws -> String {
        guard Self.isFingerprint(fingerprint) else {
            throw RequestError.badRequest(GodwitError("'\(fingerprint.prefix(80))' is not an image fingerprint (64 hex digits)"))
        }
        guard bytes <= Self.maxTransferBytes else {
            throw RequestError.badRequest(GodwitError("the announced image size \(bytes) bytes is out of bounds"))
        }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var fs = statvfs()
        guard statvfs(directory.path, &fs) == 0 else { throw GodwitError.errno("statvfs \(directory.path)") }
        let (free, overflow) = UInt64(fs.f_bavail).multipliedReportingOverflow(by: UInt64(fs.f_frsize))
        if !overflow && free < bytes + Self.transferReserve {
            throw RequestError.conflict(GodwitError(
                "\(hostName) lacks the container's image and has no room for it: \(bytes >> 20) MiB needed (+\(Self.transferReserve >> 20) MiB reserve), \(free >> 20) MiB free in \(directory.path)",
                hint: "free space on \(hostName), or import the image there first"))
        }
        let staging = directory.appendingPathComponent(Self.stagingPrefix + fingerprint.prefix(12) + "-" + UUID().uuidString.lowercased())
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: false)
        return staging.path
    }

    /// Checks the received tree and makes it this host's image: renamed into
    /// images/<fingerprint>, recorded under `wanted` if that alias is free here, else
    /// "<wanted>-<first 12 of the fingerprint>". Returns the image (an existing record when
    /// another move or an import brought the same image meanwhile).
    public nonisolated func installTransferred(staging: String, fingerprint: String, alias wanted: String,
                                               announcedBytes: UInt64, from peer: String) throws -> ImageRecord {
        let fm = FileManager.default
        guard Self.isFingerprint(fingerprint) else { throw GodwitError("'\(fingerprint.prefix(80))' is not an image fingerprint") }
        let rootfs = URL(fileURLWithPath: staging).appendingPathComponent("rootfs")
        guard Self.looksLikeRootfs(rootfs) else {
            throw GodwitError("the image received from \(peer) is not a root filesystem (no /sbin/init or /bin/sh)")
        }
        let size = Self.size(of: URL(fileURLWithPath: staging))
        // rsync may round up (directories, hard-link bookkeeping); a tree far beyond what was
        // announced is not the image that was announced.
        let allowed = announcedBytes + announcedBytes / 4 + (64 << 20)
        guard size >= 0, UInt64(size) <= allowed else {
            throw GodwitError("the image received from \(peer) is \(size) bytes; \(announcedBytes) were announced")
        }
        let final = directory.appendingPathComponent(fingerprint)
        if fm.fileExists(atPath: final.path) {
            try? fm.removeItem(atPath: staging)
        } else if rename(staging, final.path) != 0 {
            throw GodwitError.errno("rename(\(staging), \(final.path))")
        }
        if let existing = try store.image(fingerprint: fingerprint) { return existing }
        // What the tree says it is, as for an imported rootfs: the peer's word would be no better.
        let identity = (try? Self.identity(of: final)) ?? RootfsInspection.identity(of: final.appendingPathComponent("rootfs"))
        let record = ImageRecord(alias: try freeAlias(wanted, fingerprint: fingerprint), fingerprint: fingerprint,
                                 path: final.path, description: "received from \(peer) with a moved container (fingerprint as there)",
                                 sizeBytes: size, os: identity.os, release: identity.release, architecture: identity.architecture)
        try store.insertImage(record)
        return record
    }

    /// `wanted` if no image has that alias here, else "<wanted>-<fingerprint prefix>".
    nonisolated func freeAlias(_ wanted: String, fingerprint: String) throws -> String {
        let suffixed = "\(wanted.prefix(50))-\(fingerprint.prefix(12))"
        for candidate in [wanted, suffixed, "image-\(fingerprint.prefix(12))"] {
            guard (try? ContainerName.validate(candidate)) != nil else { continue }
            if try store.image(candidate) == nil { return candidate }
        }
        throw GodwitError("no free alias for image \(fingerprint.prefix(12)) (tried '\(wanted)' and '\(suffixed)')")
    }

    /// What `importTarball` accepts as a root filesystem.
    nonisolated static func looksLikeRootfs(_ rootfs: URL) -> Bool {
        let fm = FileManager.default
        return ["bin/sh", "sbin/init", "usr/bin/sh"].contains {
            let path = rootfs.appendingPathComponent($0).path
            return fm.fileExists(atPath: path) || (try? fm.destinationOfSymbolicLink(atPath: path)) != nil
        }
    }

    /// Staging trees a previous daemon left (it died during a move's image phase).
    public nonisolated func removeLeftoverTransfers() {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        for name in names where name.hasPrefix(Self.stagingPrefix) {
            try? FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
    }
}
