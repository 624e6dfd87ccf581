import API
import Foundation
import GodwitCore

/// A host file copied into a built image, e.g. the static `memtouch` workload program.
public struct ImageExtraFile: Sendable, Equatable {
    public var source: String
    /// Path inside the rootfs, e.g. "usr/bin/memtouch".
    public var destination: String
    public var mode: Int

    public init(source: String, destination: String, mode: Int = 0o755) {
        self.source = source; self.destination = destination; self.mode = mode
    }
}

/// Images live in STATE_DIR/images/<fingerprint>/rootfs (plus metadata.yaml and templates/
/// for LXD images); aliases are rows in the store. An actor, so two launches that both need
/// the busybox image build it once. Importing, exporting and building Debian images:
/// ImageStore+Import.swift.
public actor ImageStore {
    public nonisolated let directory: URL
    let store: Store
    let busybox: String
    let extraFiles: [ImageExtraFile]
    public nonisolated let debian: DebianImageBuilder

    public init(directory: URL, store: Store, busybox: String = "/bin/busybox", extraFiles: [ImageExtraFile] = [],
                debian: DebianImageBuilder = DebianImageBuilder()) {
        self.directory = directory; self.store = store; self.busybox = busybox; self.extraFiles = extraFiles
        self.debian = debian
    }

    public nonisolated func rootfs(_ record: ImageRecord) -> URL {
        URL(fileURLWithPath: record.path).appendingPathComponent("rootfs")
    }

    /// The image for `alias`, building the builtin busybox image on first use.
    /// Unknown aliases are the client's mistake (400), found before any work starts.
    public func resolve(_ alias: String, progress: OperationHandle? = nil) async throws -> ImageRecord {
        if let record = try store.image(alias) { return record }
        guard alias == BuiltinImage.busybox else { throw Self.unknown(alias) }
        progress?.progress("building the busybox image")
        return try buildBusybox()
    }

    /// Whether `alias` can be resolved without asking for work (for request validation).
    public nonisolated func isKnown(_ alias: String) throws -> Bool {
        if alias == BuiltinImage.busybox { return true }
        return try store.image(alias) != nil
    }

    static func unknown(_ alias: String) -> RequestError {
        .badRequest(GodwitError("unknown image '\(alias)'",
                                hint: "`godwit image list` shows the images; `busybox` is built in; import others with `godwit image import TARBALL --alias NAME`"))
    }

    // MARK: building busybox

    func buildBusybox() throws -> ImageRecord {
        guard FileManager.default.isExecutableFile(atPath: busybox) else {
            throw GodwitError("cannot build the busybox image: \(busybox) is missing",
                              hint: "install the busybox-static package (`make setup`)")
        }
        var manifest = "godwit busybox image v1\n" + Self.initScript
        manifest += "busybox " + (try Self.sha256(file: busybox)) + "\n"
        for file in extraFiles {
            guard FileManager.default.fileExists(atPath: file.source) else {
                throw GodwitError("cannot build the busybox image: extra file \(file.source) is missing")
            }
            manifest += "\(file.destination) \(String(file.mode, radix: 8)) " + (try Self.sha256(file: file.source)) + "\n"
        }
        let fingerprint = try Self.sha256(text: manifest)
        let final = directory.appendingPathComponent(fingerprint)
        if !FileManager.default.fileExists(atPath: final.path) {
            let staging = try stagingDirectory()
            do {
                try populateBusybox(staging.appendingPathComponent("rootfs"))
                try moveIntoPlace(staging, final)
            } catch {
                try? FileManager.default.removeItem(at: staging)
                throw error
            }
        }
        let record = ImageRecord(alias: BuiltinImage.busybox, fingerprint: fingerprint, path: final.path,
                                 description: "busybox (built from the host's \(busybox))",
                                 sizeBytes: Self.size(of: final), os: "busybox", release: busyboxVersion(),
                                 architecture: Architecture.host)
        try store.insertImage(record)
        return record
    }

    /// "1.35.0" from the banner's "BusyBox v1.35.0 (Debian 1:1.35.0-4+b3) multi-call binary."
    private func busyboxVersion() -> String {
        let banner = (try? Command.run([busybox, "--help"]))?.stdout.split(separator: "\n").first ?? ""
        return banner.split(separator: " ").first { $0.hasPrefix("v") }.map { String($0.dropFirst()) } ?? ""
    }

    private func populateBusybox(_ rootfs: URL) throws {
        let fm = FileManager.default
        for dir in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp", "root", "var/log", "run"] {
            try fm.createDirectory(at: rootfs.appendingPathComponent(dir), withIntermediateDirectories: true)
        }
        try fm.setAttributes([.posixPermissions: 0o1777], ofItemAtPath: rootfs.appendingPathComponent("tmp").path)
        try fm.setAttributes([.posixPermissions: 0o700], ofItemAtPath: rootfs.appendingPathComponent("root").path)
        try fm.copyItem(atPath: busybox, toPath: rootfs.appendingPathComponent("bin/busybox").path)
        // Not `busybox --install -s DIR`: its links point at the host's busybox path. These
        // point at /bin/busybox inside the rootfs.
        let applets = try Command.check([busybox, "--list-full"]).stdout.split(separator: "\n").map(String.init)
        for applet in applets where !["bin/busybox", "sbin/init", "linuxrc"].contains(applet) {
            let link = rootfs.appendingPathComponent(applet)
            try fm.createDirectory(at: link.deletingLastPathComponent(), withIntermediateDirectories: true)
            if !fm.fileExists(atPath: link.path) {
                try fm.createSymbolicLink(atPath: link.path, withDestinationPath: "/bin/busybox")
            }
        }
        try write(rootfs, "etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n")
        try write(rootfs, "etc/group", "root:x:0:\nnogroup:x:65534:\n")
        try write(rootfs, "etc/hostname", "godwit\n")
        try write(rootfs, "etc/hosts", "127.0.0.1 localhost\n")
        try write(rootfs, "sbin/init", Self.initScript, mode: 0o755)
        Self.makeDeviceNodes(rootfs.appendingPathComponent("dev"))
        for file in extraFiles {
            let target = rootfs.appendingPathComponent(file.destination)
            try fm.createDirectory(at: target.deletingLastPathComponent(), withIntermediateDirectories: true)
            try? fm.removeItem(at: target)
            try fm.copyItem(atPath: file.source, toPath: target.path)
            try fm.setAttributes([.posixPermissions: file.mode], ofItemAtPath: target.path)
        }
    }

    /// PID 1 of a busybox container. It needs no tty and mounts nothing (the runtime mounts
    /// /proc), so CRIU can checkpoint it; SIGTERM (`godwit stop`) ends it cleanly, and
    /// `wait` also reaps orphans that the kernel reparents to it.
    /// busybox sh opens /dev/null for every background job; `|| sleep 1` keeps a rootfs
    /// without it from turning the loop into a busy spin that floods the console log.
    static let initScript = """
        #!/bin/sh
        trap 'echo "godwit-init: stopping"; exit 0' TERM INT PWR
        echo "godwit-init: $(hostname) started"
        while :; do
            sleep 3600 &
            wait $! || sleep 1
        done

        """

    /// The few device nodes shells and programs expect, for runtimes that don't mount
    /// their own /dev. Needs root (CAP_MKNOD); without it the image simply lacks them.
    /// dev_t is (major << 8) | minor for numbers this small (glibc's makedev is a macro).
    static func makeDeviceNodes(_ dev: URL) {
        for (name, minor) in [("null", 3), ("zero", 5), ("random", 8), ("urandom", 9)] {
            let path = dev.appendingPathComponent(name).path
            if mknod(path, S_IFCHR | 0o666, dev_t(1 << 8 | minor)) == 0 { chmod(path, 0o666) }
        }
    }

    public func delete(_ alias: String) throws {
        let (record, stillUsed) = try store.deleteImage(alias)
        if !stillUsed { try? FileManager.default.removeItem(atPath: record.path) }
    }

    // MARK: helpers

    func stagingDirectory() throws -> URL {
        let staging = directory.appendingPathComponent(".staging-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: true)
        return staging
    }

    /// A rename, so an image directory is either complete or absent.
    func moveIntoPlace(_ staging: URL, _ final: URL) throws {
        if rename(staging.path, final.path) != 0 {
            throw GodwitError.errno("rename(\(staging.path), \(final.path))")
        }
    }

    func write(_ rootfs: URL, _ path: String, _ text: String, mode: Int = 0o644) throws {
        let url = rootfs.appendingPathComponent(path)
        try? FileManager.default.removeItem(at: url)
        try Data(text.utf8).write(to: url)
        try FileManager.default.setAttributes([.posixPermissions: mode], ofItemAtPath: url.path)
    }

    static func sha256(file: String) throws -> String {
        guard FileManager.default.isReadableFile(atPath: file) else {
            throw RequestError.badRequest(GodwitError("cannot read \(file)", hint: "give a path readable by godwitd (it runs as root on this host)"))
        }
        return String(try Command.check(["sha256sum", file]).stdout.prefix(64))
    }

    static func sha256(text: String) throws -> String {
        String(try Command.check(["sha256sum", "-"], input: text).stdout.prefix(64))
    }

    static func size(of directory: URL) -> Int64 {
        guard let out = try? Command.run(["du", "-sb", directory.path]), out.succeeded else { return 0 }
        return Int64(out.stdout.split(separator: "\t").first ?? "0") ?? 0
    }
}
