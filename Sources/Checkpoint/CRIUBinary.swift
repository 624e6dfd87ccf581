import Foundation
import GodwitCore
import Synchronization

/// A CRIU version such as 4.2.1. Pages can only travel between hosts whose CRIU speaks the
/// same page-server header (4.1 used 24 bytes, 4.2 uses 32; nothing negotiates), so versions
/// are compared, not just printed.
public struct CRIUVersion: Comparable, Codable, Sendable, CustomStringConvertible {
    public var major: Int, minor: Int, patch: Int

    public init(_ major: Int, _ minor: Int, _ patch: Int = 0) {
        self.major = major; self.minor = minor; self.patch = patch
    }

    /// Parses "Version: 4.2.1" (criu --version) or a bare "4.2".
    public init?(parsing text: String) {
        let scanned = text.split(whereSeparator: { $0 == "\n" || $0 == " " })
            .first(where: { $0.first?.isNumber == true && $0.contains(".") })
        guard let parts = scanned?.split(separator: ".").map({ Int($0.prefix(while: \.isNumber)) }),
              parts.count >= 2, let major = parts[0], let minor = parts[1] else { return nil }
        self.init(major, minor, parts.count > 2 ? (parts[2] ?? 0) : 0)
    }

    public static func < (a: CRIUVersion, b: CRIUVersion) -> Bool {
        (a.major, a.minor, a.patch) < (b.major, b.minor, b.patch)
    }

    public var description: String { "\(major).\(minor).\(patch)" }

    /// Older CRIU fails on this project's kernels: 3.17 trips over the vDSO, 4.1 can't dump
    /// inet sockets on Linux >= 6.16.
    public static let minimum = CRIUVersion(4, 2)

    /// The page-server wire format (header size) this version speaks.
    public var pageServerProtocol: Int { self >= CRIUVersion(4, 2) ? 2 : 1 }
}

/// Where the CRIU binary came from, so `godwit check` can say which one is in use.
public enum CRIUSource: String, Codable, Sendable {
    case setting        // daemon setting or --criu flag
    case environment    // GODWIT_CRIU
    case provisioned    // <project>/.criu/bin/criu, written by `make setup`
    case system         // criu in PATH
}

/// The CRIU executable Godwit runs. Lookup order: explicit setting, `GODWIT_CRIU`, the
/// copy `make setup` provisioned next to the checkout, then `criu` in PATH.
public struct CRIUBinary: Sendable {
    public var path: String
    public var source: CRIUSource

    public static let environmentVariable = "GODWIT_CRIU"

    public init(path: String, source: CRIUSource) {
        self.path = path
        self.source = source
    }

    public static func locate(setting: String? = nil,
                              environment: [String: String] = ProcessInfo.processInfo.environment) throws -> CRIUBinary {
        if let setting, !setting.isEmpty { return try existing(setting, .setting) }
        if let env = environment[environmentVariable], !env.isEmpty { return try existing(env, .environment) }
        if let provisioned = GodwitPaths.findUpwards(".criu/bin/criu") {
            return CRIUBinary(path: provisioned.path, source: .provisioned)
        }
        // `make install` puts it in PREFIX/lib/godwit/criu, next to PREFIX/bin.
        let installed = GodwitPaths.executableDirectory.appendingPathComponent("../lib/godwit/criu/bin/criu").standardizedFileURL.path
        if access(installed, X_OK) == 0 { return CRIUBinary(path: installed, source: .provisioned) }
        if let system = Command.which("criu") { return CRIUBinary(path: system, source: .system) }
        throw GodwitError("CRIU not found",
                          hint: "run `make setup` (provisions CRIU \(CRIUVersion.minimum)+ into .criu/), or set \(environmentVariable)=/path/to/criu")
    }

    private static func existing(_ path: String, _ source: CRIUSource) throws -> CRIUBinary {
        guard access(path, X_OK) == 0 else {
            throw GodwitError("CRIU at \(path) (from \(source.rawValue)) is not an executable file",
                              hint: "fix the path or unset it to use the provisioned CRIU")
        }
        return CRIUBinary(path: path, source: source)
    }

    public func version() throws -> CRIUVersion {
        let result = try Command.run([path, "--version"])
        guard let version = CRIUVersion(parsing: result.stdout) else {
            throw GodwitError("cannot read CRIU's version from `\(path) --version`: \(result.lastErrorLine)")
        }
        return version
    }

    /// Throws unless the version is new enough for this kernel.
    /// Versions already asked, by path and the file's change time: the destination looks
    /// CRIU up for every restore, inside the source's frozen window, and `criu --version`
    /// is a process start (through the private prefix's loader) each time.
    private static let knownVersions = Mutex<[String: (changed: timespec, version: CRIUVersion)]>([:])

    public func requireUsableVersion() throws -> CRIUVersion {
        var st = stat()
        let changed: timespec? = stat(path, &st) == 0 ? st.st_ctim : nil
        if let changed, let known = Self.knownVersions.withLock({ $0[path] }),
           known.changed.tv_sec == changed.tv_sec, known.changed.tv_nsec == changed.tv_nsec {
            return known.version
        }
        let version = try version()
        if let changed { Self.knownVersions.withLock { $0[path] = (changed, version) } }
        guard version >= CRIUVersion.minimum else {
            throw GodwitError("CRIU \(version) at \(path) is too old (need \(CRIUVersion.minimum) or newer)",
                              hint: "run `make setup` to provision CRIU 4.2.1 privately, or point \(Self.environmentVariable) at a newer criu")
        }
        return version
    }

    /// `criu check`: CRIU's own verdict on whether this kernel can checkpoint.
    public func check(feature: String? = nil) -> ProbeResult {
        var argv = [path, "check"]
        if let feature { argv += ["--feature", feature] }
        guard let result = try? Command.run(argv) else { return .no("could not run \(path)") }
        let output = (result.stdout + result.stderr).trimmingCharacters(in: .whitespacesAndNewlines)
        if result.succeeded {
            let last = output.split(separator: "\n").last.map(String.init) ?? "ok"
            return .yes(last)
        }
        return .no(result.lastErrorLine.isEmpty ? "criu check exited \(result.status)" : result.lastErrorLine)
    }
}
