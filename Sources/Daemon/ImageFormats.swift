import API
import Foundation
import GodwitCore

/// What an image is: shown by `image list`, written into exported metadata.yaml.
public struct ImageIdentity: Sendable, Equatable {
    public var os: String
    public var release: String
    /// Debian's name (amd64, arm64), whatever the source called it.
    public var architecture: String
    public var description: String?

    public init(os: String = "", release: String = "", architecture: String = "", description: String? = nil) {
        self.os = os; self.release = release; self.architecture = architecture; self.description = description
    }
}

/// Architecture names: LXD's metadata.yaml uses the kernel's (x86_64), dpkg uses Debian's
/// (amd64). Godwit stores Debian's and writes the kernel's into exported metadata, which is
/// what LXD writes (LXD accepts both on import).
enum Architecture {
    static let kernelToDebian = ["x86_64": "amd64", "aarch64": "arm64", "armv7l": "armhf", "armv6l": "armel",
                                 "i686": "i386", "i586": "i386", "ppc64le": "ppc64el", "s390x": "s390x",
                                 "riscv64": "riscv64", "loongarch64": "loong64"]

    static func debian(_ name: String) -> String { kernelToDebian[name] ?? name }

    static func kernel(_ debian: String) -> String {
        kernelToDebian.first { $0.value == debian && $0.key != "i586" }?.key ?? debian
    }

    static var host: String {
        var names = utsname()
        uname(&names)
        let machine = withUnsafeBytes(of: &names.machine) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return debian(machine)
    }
}

/// Paths inside an unpacked rootfs. Symlinks are followed as the container would see them
/// (absolute targets re-rooted), never out to the host's files: images are untrusted.
enum RootfsPath {
    static func resolve(_ rootfs: URL, _ path: String) -> URL? {
        var pending = path.split(separator: "/").map(String.init)
        var resolved: [String] = []
        var hops = 0
        while !pending.isEmpty {
            let part = pending.removeFirst()
            if part == "." || part.isEmpty { continue }
            if part == ".." { _ = resolved.popLast(); continue }
            let candidate = rootfs.appendingPathComponent((resolved + [part]).joined(separator: "/"))
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: candidate.path) {
                hops += 1
                guard hops <= 40 else { return nil }
                if target.hasPrefix("/") { resolved = [] }
                pending = target.split(separator: "/").map(String.init) + pending
                continue
            }
            resolved.append(part)
        }
        let url = rootfs.appendingPathComponent(resolved.joined(separator: "/"))
        return FileManager.default.fileExists(atPath: url.path) ? url : nil
    }

    /// A regular file's text, at most `limit` bytes (a hostile image may hold anything).
    static func read(_ rootfs: URL, _ path: String, limit: Int = 1 << 20) -> String? {
        guard let url = resolve(rootfs, path),
              let attributes = try? FileManager.default.attributesOfItem(atPath: url.path),
              attributes[.type] as? FileAttributeType == .typeRegular,
              let handle = try? FileHandle(forReadingFrom: url) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.read(upToCount: limit) else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    static func exists(_ rootfs: URL, _ path: String) -> Bool { resolve(rootfs, path) != nil }
}

enum RootfsInspection {
    /// os-release's ID and VERSION_CODENAME, dpkg's architecture (what `dpkg
    /// --print-architecture` prints: var/lib/dpkg/arch's first line, else the dpkg
    /// package's), falling back to this host's.
    static func identity(of rootfs: URL) -> ImageIdentity {
        var identity = ImageIdentity(architecture: Architecture.host)
        if let text = RootfsPath.read(rootfs, "etc/os-release") ?? RootfsPath.read(rootfs, "usr/lib/os-release") {
            let fields = osRelease(text)
            identity.os = fields["ID"] ?? ""
            identity.release = fields["VERSION_CODENAME"] ?? fields["VERSION_ID"] ?? ""
            identity.description = fields["PRETTY_NAME"]
        }
        if let arch = RootfsPath.read(rootfs, "var/lib/dpkg/arch")?.split(separator: "\n").first,
           !arch.trimmingCharacters(in: .whitespaces).isEmpty {
            identity.architecture = arch.trimmingCharacters(in: .whitespaces)
        } else if let status = RootfsPath.read(rootfs, "var/lib/dpkg/status", limit: 64 << 20),
                  let arch = dpkgArchitecture(status: status) {
            identity.architecture = arch
        }
        return identity
    }

    static func osRelease(_ text: String) -> [String: String] {
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            guard let eq = line.firstIndex(of: "="), !line.hasPrefix("#") else { continue }
            var value = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let q = value.first, q == "\"" || q == "'", value.last == q {
                value = String(value.dropFirst().dropLast())
            }
            fields[line[..<eq].trimmingCharacters(in: .whitespaces)] = value
        }
        return fields
    }

    static func dpkgArchitecture(status: String) -> String? {
        for stanza in status.components(separatedBy: "\n\n") where stanza.hasPrefix("Package: dpkg\n") {
            for line in stanza.split(separator: "\n") where line.hasPrefix("Architecture: ") {
                return String(line.dropFirst("Architecture: ".count))
            }
        }
        return nil
    }
}

/// LXD's image metadata.yaml: architecture, creation_date, properties, templates.
enum LXDMetadata {
    static func identity(fromYAML text: String) throws -> ImageIdentity {
        let yaml: YAMLValue
        do { yaml = try YAML.parse(text) } catch {
            throw GodwitError("cannot read the image's metadata.yaml: \(error)",
                              hint: "an LXD image's metadata.yaml has architecture, creation_date and properties")
        }
        guard case .mapping = yaml else {
            throw GodwitError("the image's metadata.yaml is not a mapping")
        }
        let properties = yaml["properties"]
        let arch = properties?["architecture"]?.string ?? yaml["architecture"]?.string ?? Architecture.host
        return ImageIdentity(os: (properties?["os"]?.string ?? "").lowercased(),
                             release: properties?["release"]?.string ?? "",
                             architecture: Architecture.debian(arch),
                             description: properties?["description"]?.string)
    }

    /// `templates` carries over from an imported LXD image, so LXD still fills in
    /// /etc/hostname and the like when it launches the exported image.
    static func yaml(_ identity: ImageIdentity, created: Date, templates: YAMLValue?) -> String {
        var properties: [(String, YAMLValue)] = [
            ("architecture", .scalar(Architecture.kernel(identity.architecture))),
            ("description", .scalar(identity.description ?? "")),
            ("os", .scalar(identity.os)),
            ("release", .scalar(identity.release)),
        ]
        properties.sort { $0.0 < $1.0 }
        var top: [(String, YAMLValue)] = [
            ("architecture", .scalar(Architecture.kernel(identity.architecture))),
            ("creation_date", .scalar(String(Int64(created.timeIntervalSince1970)))),
            ("properties", .mapping(properties)),
        ]
        if let templates, case .mapping(let entries) = templates, !entries.isEmpty { top.append(("templates", templates)) }
        return YAML.emit(.mapping(top))
    }
}

/// What kind of file an image argument is, from its first bytes (and, compressed, from the
/// first bytes it decompresses to): cheap enough to answer a request with 400 before any
/// operation starts.
enum ImageFileKind: Equatable {
    case tar, squashfs

    static func sniff(_ path: String) throws -> ImageFileKind {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw RequestError.badRequest(GodwitError("cannot read \(path)", hint: "give a path readable by godwitd (it runs as root on this host)"))
        }
        defer { try? handle.close() }
        let head = [UInt8]((try? handle.read(upToCount: 512)) ?? Data())
        if head.starts(with: Array("hsqs".utf8)) { return .squashfs }
        let decompressor: String?
        if head.starts(with: [0x1f, 0x8b]) { decompressor = "gzip" }
        else if head.starts(with: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]) { decompressor = "xz" }
        else if head.starts(with: [0x28, 0xb5, 0x2f, 0xfd]) { decompressor = "zstd" }
        else if head.starts(with: Array("BZh".utf8)) { decompressor = "bzip2" }
        else { decompressor = nil }
        var block = head
        if let decompressor {
            // Only the first tar header: `head` closes the pipe and the decompressor stops.
            let out = try Command.run(["sh", "-c", "\(decompressor) -dc -- \"$1\" 2>/dev/null | head -c 512 | od -An -v -tx1",
                                       "sh", path])
            block = out.stdout.split(whereSeparator: { $0 == " " || $0 == "\n" }).compactMap { UInt8($0, radix: 16) }
        }
        // POSIX and GNU tar headers say "ustar" at offset 257.
        guard block.count >= 262, Array(block[257..<262]) == Array("ustar".utf8) else {
            throw RequestError.badRequest(GodwitError("\(path) is not a tar archive (plain, gzip, xz, zstd or bzip2) or a squashfs",
                                                      hint: "give a rootfs tarball or an LXD image (unified tarball, or metadata and rootfs)"))
        }
        return .tar
    }
}
