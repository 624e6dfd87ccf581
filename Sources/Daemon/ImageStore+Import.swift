import API
import Foundation
import GodwitCore

/// How an image tarball is laid out, from its listing.
enum ImageLayout: Equatable {
    /// A root filesystem at the top (Godwit's and most tools' export).
    case rootfs
    /// LXD's unified image: metadata.yaml, rootfs/ and maybe templates/ at the top, each
    /// name with `prefix` ("" or "./").
    case unified(prefix: String, templates: Bool)
    /// The metadata half of a split LXD image.
    case metadataOnly(prefix: String, templates: Bool)

    static func of(listing: String) -> ImageLayout {
        var prefix: String?, rootfs = false, templates = false
        for line in listing.split(separator: "\n") {
            let name = line.hasPrefix("./") ? line.dropFirst(2) : line[...]
            if name == "metadata.yaml" { prefix = line.hasPrefix("./") ? "./" : "" }
            else if name.hasPrefix("rootfs/") || name == "rootfs" { rootfs = true }
            else if name.hasPrefix("templates/") || name == "templates" { templates = true }
        }
        guard let prefix else { return .rootfs }
        return rootfs ? .unified(prefix: prefix, templates: templates) : .metadataOnly(prefix: prefix, templates: templates)
    }
}

extension ImageStore {
    // MARK: importing

    /// Checks a request's files before any operation starts: readable, and a tarball (or a
    /// squashfs for a split image's rootfs, when unsquashfs is there to unpack it).
    public static func validateImport(_ request: ImageImportRequest) throws {
        for path in [request.tarball] + (request.rootfs.map { [$0] } ?? []) {
            guard path.hasPrefix("/") else {
                throw RequestError.badRequest(GodwitError("the image path must be absolute: \(path)"))
            }
            guard FileManager.default.fileExists(atPath: path) else {
                throw RequestError.badRequest(GodwitError("no such file on the daemon's host: \(path)"))
            }
        }
        guard try ImageFileKind.sniff(request.tarball) == .tar else {
            throw RequestError.badRequest(GodwitError("\(request.tarball) is a squashfs, not a tarball",
                                                      hint: "a squashfs is the rootfs half of a split LXD image: `godwit image import META.tar.xz ROOTFS.squashfs`"))
        }
        if let rootfs = request.rootfs, try ImageFileKind.sniff(rootfs) == .squashfs, Command.which("unsquashfs") == nil {
            throw RequestError.badRequest(GodwitError("\(rootfs) is a squashfs and unsquashfs is not installed",
                                                      hint: "install squashfs-tools, or give the rootfs as a tarball"))
        }
    }

    /// Imports a plain rootfs tarball, a unified LXD image, or (with `rootfs`) a split LXD
    /// image. The fingerprint is LXD's: sha256 of the file, or of metadata then rootfs.
    /// `identity` and `prepare` are for built images, which know what they are and get a
    /// few files added after unpacking (the tarball, and so the fingerprint, stay mmdebstrap's).
    public func importImage(_ path: String, rootfs rootfsPath: String? = nil, alias: String, progress: OperationHandle?,
                            identity known: ImageIdentity? = nil, description: String? = nil,
                            prepare: (@Sendable (URL) throws -> Void)? = nil) throws -> ImageRecord {
        if try store.image(alias) != nil {
            throw RequestError.conflict(GodwitError("image alias '\(alias)' already exists",
                                                    hint: "choose another alias, or `godwit image delete \(alias)` first"))
        }
        progress?.progress("hashing \(path)" + (rootfsPath.map { " and \($0)" } ?? ""))
        let fingerprint = try rootfsPath.map { try Self.sha256(files: [path, $0]) } ?? Self.sha256(file: path)
        try Task.checkCancellation()
        let final = directory.appendingPathComponent(fingerprint)
        if !FileManager.default.fileExists(atPath: final.path) {
            let staging = try stagingDirectory()
            do {
                try unpack(path, rootfs: rootfsPath, into: staging, progress: progress)
                let rootfs = staging.appendingPathComponent("rootfs")
                // A dangling link counts: a rootfs may link /bin/sh to a shell it installs later.
                guard ["bin/sh", "sbin/init", "usr/bin/sh"].contains(where: {
                    RootfsPath.exists(rootfs, $0)
                        || (try? FileManager.default.destinationOfSymbolicLink(atPath: rootfs.appendingPathComponent($0).path)) != nil
                }) else {
                    throw RequestError.badRequest(GodwitError("\(rootfsPath ?? path) does not look like a root filesystem (no /sbin/init or /bin/sh)",
                                                              hint: "create the tarball from inside the rootfs, e.g. `tar -C ROOTFS -czf image.tar.gz .`"))
                }
                try prepare?(rootfs)
                try Task.checkCancellation()
                try moveIntoPlace(staging, final)
            } catch {
                try? FileManager.default.removeItem(at: staging)
                throw error
            }
        }
        let identity = try known ?? Self.identity(of: final)
        let record = ImageRecord(alias: alias, fingerprint: fingerprint, path: final.path,
                                 description: description ?? identity.description ?? "imported from \(path)",
                                 sizeBytes: Self.size(of: final), os: identity.os, release: identity.release,
                                 architecture: identity.architecture)
        try store.insertImage(record)
        return record
    }

    /// An LXD image's metadata.yaml says what it is; otherwise the rootfs does.
    static func identity(of imageDirectory: URL) throws -> ImageIdentity {
        let metadata = imageDirectory.appendingPathComponent("metadata.yaml")
        if let text = try? String(contentsOf: metadata, encoding: .utf8) {
            return try LXDMetadata.identity(fromYAML: text)
        }
        return RootfsInspection.identity(of: imageDirectory.appendingPathComponent("rootfs"))
    }

    private func unpack(_ path: String, rootfs rootfsPath: String?, into staging: URL, progress: OperationHandle?) throws {
        let rootfs = staging.appendingPathComponent("rootfs")
        progress?.progress("reading \(path)")
        let listing = try Command.check(["tar", "-tf", path], hint: "is \(path) a (possibly compressed) tar archive?").stdout
        let layout = ImageLayout.of(listing: listing)
        switch (layout, rootfsPath) {
        case (.rootfs, nil):
            try FileManager.default.createDirectory(at: rootfs, withIntermediateDirectories: true)
            progress?.progress("unpacking \(path)")
            try extract(path, into: rootfs)
        case (.unified(let prefix, let templates), nil):
            progress?.progress("unpacking the LXD image \(path)")
            try extract(path, into: staging, members: [prefix + "metadata.yaml", prefix + "rootfs"] + (templates ? [prefix + "templates"] : []))
        case (.metadataOnly, nil):
            throw RequestError.badRequest(GodwitError("\(path) holds an LXD image's metadata but no rootfs",
                                                      hint: "a split image is imported with both halves: `godwit image import META.tar.xz ROOTFS.tar.xz`"))
        case (.metadataOnly(let prefix, let templates), let rootfsPath?), (.unified(let prefix, let templates), let rootfsPath?):
            try extract(path, into: staging, members: [prefix + "metadata.yaml"] + (templates ? [prefix + "templates"] : []))
            progress?.progress("unpacking the LXD image's rootfs \(rootfsPath)")
            if try ImageFileKind.sniff(rootfsPath) == .squashfs {
                guard Command.which("unsquashfs") != nil else {
                    throw RequestError.badRequest(GodwitError("\(rootfsPath) is a squashfs and unsquashfs is not installed",
                                                              hint: "install squashfs-tools, or give the rootfs as a tarball"))
                }
                try Command.check(["unsquashfs", "-f", "-no-progress", "-d", rootfs.path, rootfsPath])
            } else {
                try FileManager.default.createDirectory(at: rootfs, withIntermediateDirectories: true)
                try extract(rootfsPath, into: rootfs)
            }
        case (.rootfs, _?):
            throw RequestError.badRequest(GodwitError("\(path) is not an LXD image's metadata (no metadata.yaml at its top)",
                                                      hint: "with two files, the first is the metadata tarball and the second the rootfs"))
        }
    }

    private func extract(_ tarball: String, into directory: URL, members: [String] = []) throws {
        try Command.check(["tar", "-xpf", tarball, "-C", directory.path, "--numeric-owner"] + members,
                          hint: "is \(tarball) a (possibly compressed) tar archive of a root filesystem?")
    }

    static func sha256(files: [String]) throws -> String {
        for file in files where !FileManager.default.isReadableFile(atPath: file) {
            throw RequestError.badRequest(GodwitError("cannot read \(file)", hint: "give a path readable by godwitd (it runs as root on this host)"))
        }
        return String(try Command.check(["sh", "-c", "cat -- \"$@\" | sha256sum", "sh"] + files).stdout.prefix(64))
    }

    // MARK: building

    /// Builds (or takes from the host-wide cache) the recipe's tarball and imports it.
    public func buildDebian(_ recipe: DebianRecipe, alias: String, refresh: Bool, progress: OperationHandle?) async throws -> ImageRecord {
        let cached = try await debian.tarball(recipe, refresh: refresh, progress: progress)
        defer { cached.release() }
        return try importImage(cached.url.path, alias: alias, progress: progress, identity: recipe.identity,
                               description: recipe.identity.description, prepare: Self.prepareDebian)
    }

    /// What a container needs that mmdebstrap leaves out: a hosts file for localhost, and
    /// /sbin/init (systemd-sysv's link; made here if a recipe ever lacks it).
    @Sendable static func prepareDebian(_ rootfs: URL) throws {
        if !RootfsPath.exists(rootfs, "etc/hosts") {
            try Data("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n".utf8)
                .write(to: rootfs.appendingPathComponent("etc/hosts"))
        }
        if !RootfsPath.exists(rootfs, "sbin/init") {
            guard RootfsPath.exists(rootfs, "lib/systemd/systemd") else {
                throw GodwitError("the built rootfs has no /sbin/init and no systemd", hint: "include systemd-sysv")
            }
            let sbin = RootfsPath.resolve(rootfs, "sbin") ?? rootfs.appendingPathComponent("sbin")
            try FileManager.default.createSymbolicLink(atPath: sbin.appendingPathComponent("init").path,
                                                       withDestinationPath: "/lib/systemd/systemd")
        }
    }

    // MARK: exporting

    public static func exportCompression(_ path: String) throws -> [String] {
        let table: [(String, [String])] = [(".tar.gz", ["-z"]), (".tgz", ["-z"]), (".tar.xz", ["-J"]), (".tar.zst", ["--zstd"]),
                                           (".tar.bz2", ["-j"]), (".tar", [])]
        guard let flags = table.first(where: { path.hasSuffix($0.0) })?.1 else {
            throw RequestError.badRequest(GodwitError("cannot tell the compression from \(path)",
                                                      hint: "name the file .tar, .tar.gz, .tar.xz, .tar.zst or .tar.bz2"))
        }
        return flags
    }

    /// Writes a unified LXD image (metadata.yaml, rootfs/, templates/ when the image came
    /// with them), which `image import` and LXD both accept. Written beside the target and
    /// renamed, so the path holds either nothing or a whole image.
    public func export(_ alias: String, to path: String, progress: OperationHandle?) async throws {
        // resolve: busybox is built on first use, for export as for launch.
        let record = try await resolve(alias, progress: progress)
        let compression = try Self.exportCompression(path)
        let image = URL(fileURLWithPath: record.path)
        let identity = ImageIdentity(os: record.os, release: record.release, architecture: record.architecture,
                                     description: record.description)
        let stored = try? String(contentsOf: image.appendingPathComponent("metadata.yaml"), encoding: .utf8)
        let templates = stored.flatMap { try? YAML.parse($0) }?["templates"]
        let staging = try stagingDirectory()
        let target = URL(fileURLWithPath: path)
        let partial = target.deletingLastPathComponent().appendingPathComponent(".\(target.lastPathComponent).partial-\(UUID().uuidString.prefix(8))")
        defer {
            try? FileManager.default.removeItem(at: staging)
            try? FileManager.default.removeItem(at: partial)
        }
        try Data(LXDMetadata.yaml(identity, created: record.createdAt, templates: templates).utf8)
            .write(to: staging.appendingPathComponent("metadata.yaml"))
        let hasTemplates = templates != nil && FileManager.default.fileExists(atPath: image.appendingPathComponent("templates").path)
        progress?.progress("writing \(path)")
        try Command.check(["tar", "-cf", partial.path, "--numeric-owner"] + compression
                          + ["-C", staging.path, "metadata.yaml", "-C", image.path, "rootfs"] + (hasTemplates ? ["templates"] : []))
        try Task.checkCancellation()
        chmod(partial.path, 0o600)
        if rename(partial.path, target.path) != 0 { throw GodwitError.errno("rename(\(partial.path), \(path))") }
    }
}
