import API
import Foundation
import GodwitCore

/// What a Debian image is built from. Two requests that name the same packages in another
/// order or twice are the same recipe, so they share one cached tarball.
public struct DebianRecipe: Sendable, Equatable {
    /// The network namespace (a path) image builds run in, when not the daemon's own.
    public static let buildNetnsVariable = "GODWIT_BUILD_NETNS"

    /// Bumped when the way Godwit builds changes, so old cached tarballs stop matching.
    static let version = 1
    static let releases = ["bookworm", "trixie"]
    static let mirror = "http://deb.debian.org/debian"
    static let variant = "apt"
    /// The init: a system container boots systemd.
    static let basePackages = ["systemd-sysv"]
    static let maxPackages = 200

    public let release: String
    /// Sorted, without duplicates, base packages included.
    public let packages: [String]

    /// Bad input is the client's mistake: a 400 that says what is wrong.
    public init(release: String, include: [String]) throws {
        guard Self.releases.contains(release) else {
            throw RequestError.badRequest(GodwitError("unknown Debian release '\(release)'",
                                                      hint: "use one of: \(Self.releases.joined(separator: ", "))"))
        }
        guard include.count <= Self.maxPackages else {
            throw RequestError.badRequest(GodwitError("too many packages (\(include.count)); at most \(Self.maxPackages)"))
        }
        for name in include where !Self.isPackageName(name) {
            throw RequestError.badRequest(GodwitError("'\(name.prefix(100))' is not a Debian package name",
                                                      hint: "names are lower case letters, digits and + . -, at least two characters, starting with a letter or digit"))
        }
        self.release = release
        packages = Array(Set(include + Self.basePackages)).sorted()
    }

    /// Debian Policy 5.6.7: `[a-z0-9][a-z0-9+.-]+`.
    static func isPackageName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard (2...100).contains(bytes.count) else { return false }
        func lowerOrDigit(_ b: UInt8) -> Bool { (0x61...0x7a).contains(b) || (0x30...0x39).contains(b) }
        return lowerOrDigit(bytes[0]) && bytes.dropFirst().allSatisfy { lowerOrDigit($0) || $0 == 0x2b || $0 == 0x2e || $0 == 0x2d }
    }

    /// Everything that decides the tarball's contents (apart from the archive's state).
    var text: String {
        "godwit debian recipe v\(Self.version)\nrelease \(release)\nvariant \(Self.variant)\nmirror \(Self.mirror)\n"
            + "architecture \(Architecture.host)\npackages \(packages.joined(separator: ","))\n"
    }

    var key: String { get throws { try ImageStore.sha256(text: text) } }

    var mmdebstrapArguments: [String] {
        ["mmdebstrap", "--variant=\(Self.variant)", "--include=\(packages.joined(separator: ","))", release]
    }

    var identity: ImageIdentity {
        let extra = packages.filter { !Self.basePackages.contains($0) }
        return ImageIdentity(os: "debian", release: release, architecture: Architecture.host,
                             description: "Debian \(release) \(Architecture.host)"
                                 + (extra.isEmpty ? "" : " with " + extra.joined(separator: ", ")))
    }
}

/// Builds Debian root filesystems with mmdebstrap into a host-wide cache: a recipe is built
/// once per machine, whichever daemon (lab host, test run) asks first; the others wait for
/// that build and reuse its tarball.
public struct DebianImageBuilder: Sendable {
    public let cacheDirectory: URL

    public init(cacheDirectory: URL = Self.defaultCacheDirectory) { self.cacheDirectory = cacheDirectory }

    /// `GODWIT_IMAGE_CACHE`, else /var/cache/godwit/images (FHS: data a program can rebuild).
    public static var defaultCacheDirectory: URL {
        let configured = ProcessInfo.processInfo.environment["GODWIT_IMAGE_CACHE"] ?? ""
        return URL(fileURLWithPath: configured.isEmpty ? "/var/cache/godwit/images" : configured)
    }

    /// A built tarball, held locked until `release()`, so a concurrent refresh cannot swap
    /// it between hashing and unpacking.
    public struct CachedTarball: Sendable {
        public let url: URL
        let lock: Int32
        public func release() { close(lock) }
    }

    /// The recipe's tarball, built first unless the cache has it (or `refresh`).
    public func tarball(_ recipe: DebianRecipe, refresh: Bool, progress: OperationHandle?) async throws -> CachedTarball {
        try FileManager.default.createDirectory(at: cacheDirectory, withIntermediateDirectories: true)
        let key = try recipe.key
        let tarball = cacheDirectory.appendingPathComponent("\(key).tar")
        let lock = try await Self.lock(cacheDirectory.appendingPathComponent("\(key).lock"), progress: progress)
        do {
            if refresh || !FileManager.default.fileExists(atPath: tarball.path) {
                try await build(recipe, into: tarball, progress: progress)
                try? Data(recipe.text.utf8).write(to: cacheDirectory.appendingPathComponent("\(key).recipe"))
            } else {
                progress?.progress("using the cached build of this recipe (\(String(key.prefix(12))))")
            }
        } catch {
            close(lock)
            throw error
        }
        return CachedTarball(url: tarball, lock: lock)
    }

    /// flock, polled, so that waiting for another daemon's build neither blocks a thread
    /// nor outlives a cancelled operation.
    static func lock(_ path: URL, progress: OperationHandle?) async throws -> Int32 {
        let fd = open(path.path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GodwitError.errno("open(\(path.path))") }
        var announced = false
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if !announced { progress?.progress("waiting for another build of the same recipe"); announced = true }
            do { try await Task.sleep(for: .milliseconds(500)) } catch { close(fd); throw error }
        }
        return fd
    }

    private func build(_ recipe: DebianRecipe, into tarball: URL, progress: OperationHandle?) async throws {
        guard Command.which("mmdebstrap") != nil else {
            throw GodwitError("cannot build Debian images: mmdebstrap is not installed", hint: "run `make setup` (or apt-get install mmdebstrap)")
        }
        let id = UUID().uuidString.prefix(8)
        let output = cacheDirectory.appendingPathComponent(".build-\(id).tar")
        let temp = cacheDirectory.appendingPathComponent(".tmp-\(id)")
        let log = cacheDirectory.appendingPathComponent(".build-\(id).log")
        try FileManager.default.createDirectory(at: temp, withIntermediateDirectories: true)
        defer {
            for url in [output, temp, log] { try? FileManager.default.removeItem(at: url) }
        }
        var environment = ProcessInfo.processInfo.environment
        environment["TMPDIR"] = temp.path
        // A private mount namespace: whatever mmdebstrap mounts in its chroot goes away with
        // it, also when a cancelled build is killed before it could unmount.
        var argv = ["unshare", "--mount", "--propagation", "private"] + recipe.mmdebstrapArguments
            + [output.path, DebianRecipe.mirror]
        // A simulated host (lab, test fixture) lives in a network namespace with no route to
        // the archive; its daemon is told where the machine's network is, as a real host's
        // daemon would simply use its own.
        if let netns = environment[DebianRecipe.buildNetnsVariable], netns.hasPrefix("/") {
            argv = ["nsenter", "--net=" + netns] + argv
        }
        progress?.progress("mmdebstrap: starting (\(recipe.release), \(recipe.packages.count) packages)")
        let pid = try DetachedProcess.spawn(argv, log: log.path, environment: environment)
        var status: Int32?
        var lastLine = ""
        while status == nil {
            do {
                try await Task.sleep(for: .milliseconds(200))
            } catch {
                // Its own session (DetachedProcess): one kill ends mmdebstrap, apt and dpkg.
                kill(-pid, SIGKILL)
                _ = DetachedProcess.terminate(pid, timeout: 5)
                throw error
            }
            status = DetachedProcess.exitStatus(of: pid)
            let line = Self.lastInfoLine(log)
            if !line.isEmpty && line != lastLine {
                lastLine = line
                progress?.progress("mmdebstrap: " + line)
            }
        }
        let logText = (try? String(contentsOf: log, encoding: .utf8)) ?? ""
        // -1: the daemon's reaper took the exit status; mmdebstrap's last words still tell.
        let succeeded = status == 0 || (status == -1 && logText.contains("I: success"))
        guard succeeded, FileManager.default.fileExists(atPath: output.path) else {
            let lastError = logText.split(separator: "\n").last { $0.hasPrefix("E: ") } ?? logText.split(separator: "\n").last ?? ""
            throw GodwitError("mmdebstrap failed (exit \(status ?? -1)) building Debian \(recipe.release): \(lastError)",
                              hint: "it needs http://deb.debian.org; check the network and the package names")
        }
        if rename(output.path, tarball.path) != 0 { throw GodwitError.errno("rename(\(output.path), \(tarball.path))") }
    }

    static func lastInfoLine(_ log: URL) -> String {
        guard let handle = try? FileHandle(forReadingFrom: log) else { return "" }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: size > 4096 ? size - 4096 : 0)
        let text = String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
        return text.split(separator: "\n").last { $0.hasPrefix("I: ") || $0.hasPrefix("E: ") }
            .map { String($0.dropFirst(3)) } ?? ""
    }
}
