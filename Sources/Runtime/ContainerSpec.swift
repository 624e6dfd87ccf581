import API
import Foundation
import GodwitCore

/// What a system container is made of. Everything else (cgroup path, veth name, MAC,
/// directories) is derived from `name`, so a container can be torn down or re-adopted
/// from its name alone.
public struct ContainerSpec: Codable, Sendable, Equatable {
    public var name: String
    /// Image directory; each container gets its own copy or overlay of it (see `RootFS`).
    public var image: String
    public var hostname: String
    /// argv of the container's init, run as pid 1.
    public var initCommand: [String]
    public var environment: [String: String]
    /// nil: the container only has `lo`.
    public var network: NetworkSpec?
    public var limits: ResourceLimits
    /// The init is a distribution's systemd: it gets the system-container environment
    /// (godwit-spawn --system, docs/system-containers.md) and halts on SIGRTMIN+3.
    public var system: Bool
    /// User namespace, bounding set and seccomp filter (SecurityProfile).
    public var security: SecurityProfile

    public init(name: String, image: String, hostname: String? = nil, initCommand: [String],
                environment: [String: String] = [:], network: NetworkSpec? = nil,
                limits: ResourceLimits = ResourceLimits(), system: Bool = false,
                security: SecurityProfile = .unconfined) throws {
        try Self.validate(name: name)
        guard !initCommand.isEmpty else { throw GodwitError("container \(name) has no init command") }
        self.name = name
        self.image = image
        self.hostname = hostname ?? name
        self.initCommand = initCommand
        self.environment = environment
        self.network = network
        self.limits = limits
        self.system = system
        self.security = security
    }

    enum CodingKeys: String, CodingKey { case name, image, hostname, initCommand, environment, network, limits, system, security }

    /// State files written before `system` existed describe busybox-style containers, and
    /// those before `security` privileged ones.
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        image = try c.decode(String.self, forKey: .image)
        hostname = try c.decode(String.self, forKey: .hostname)
        initCommand = try c.decode([String].self, forKey: .initCommand)
        environment = try c.decode([String: String].self, forKey: .environment)
        network = try c.decodeIfPresent(NetworkSpec.self, forKey: .network)
        limits = try c.decode(ResourceLimits.self, forKey: .limits)
        system = try c.decodeIfPresent(Bool.self, forKey: .system) ?? false
        security = try c.decodeIfPresent(SecurityProfile.self, forKey: .security) ?? .unconfined
    }

    /// What systemd reads to know it runs in a container (and so skips the kernel's API
    /// file systems and units with ConditionVirtualization=!container).
    public static let containerVariable = "godwit"

    /// The signal that shuts the init down cleanly: systemd halts on SIGRTMIN+3 and takes
    /// SIGTERM as "re-execute yourself". SIGRTMIN is a glibc function, not a constant; what
    /// counts is the number the container's glibc (34: it keeps 32 and 33) makes of it.
    public var stopSignal: Int32 { system ? Self.systemdHaltSignal : SIGTERM }
    public static let systemdHaltSignal: Int32 = 34 + 3

    /// Whether the image's /sbin/init is systemd (Debian links it to /lib/systemd/systemd).
    public static func initIsSystemd(imageRootfs: String) -> Bool {
        var path = imageRootfs + "/sbin/init"
        // Follow links inside the image, never out of it: at most 8, each resolved below the root.
        for _ in 0..<8 {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: path) else { break }
            if target.hasSuffix("/systemd") || target == "systemd" { return true }
            path = target.hasPrefix("/") ? imageRootfs + target
                : (path as NSString).deletingLastPathComponent + "/" + target
        }
        return path.hasSuffix("/systemd")
    }

    /// Names become cgroup directories, veth and file names and hostnames. The rule is the
    /// API's (`ContainerName`), the one the CLI and the daemon apply: one rule, one place.
    public static func validate(name: String) throws {
        try ContainerName.validate(name)
    }

    /// The environment as `K=V` lines, with a PATH when the caller gave none.
    var environmentLines: [String] {
        var env = environment
        if system && env["container"] == nil { env["container"] = Self.containerVariable }
        if env["PATH"] == nil { env["PATH"] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" }
        return env.keys.sorted().map { "\($0)=\(env[$0]!)" }
    }
}

/// cgroup limits; nil means unlimited.
public struct ResourceLimits: Codable, Sendable, Equatable {
    public var memoryBytes: UInt64?
    public var pidsMax: Int?
    /// CPUs' worth of time per period (0.5 = half a CPU).
    public var cpuQuota: Double?

    public init(memoryBytes: UInt64? = nil, pidsMax: Int? = nil, cpuQuota: Double? = nil) {
        self.memoryBytes = memoryBytes
        self.pidsMax = pidsMax
        self.cpuQuota = cpuQuota
    }
}

/// eth0 of a container: a veth whose host end is enslaved to `bridge`.
public struct NetworkSpec: Codable, Sendable, Equatable {
    public var bridge: String
    public var address: IPv4Interface
    public var gateway: IPv4Address?
    /// nil: derived from the container's name (`MACAddress.derived`), so it survives
    /// restarts and migrations without being stored anywhere.
    public var mac: MACAddress?

    public init(bridge: String, address: IPv4Interface, gateway: IPv4Address? = nil, mac: MACAddress? = nil) {
        self.bridge = bridge
        self.address = address
        self.gateway = gateway
        self.mac = mac
    }
}

public struct IPv4Address: Codable, Sendable, Hashable, CustomStringConvertible {
    public let description: String

    public init(_ text: String) throws {
        var addr = in_addr()
        guard inet_pton(AF_INET, text, &addr) == 1 else {
            throw GodwitError("invalid IPv4 address \"\(text)\"", hint: "write it as a.b.c.d")
        }
        description = text
    }

    public init(from decoder: Decoder) throws { try self.init(try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// An address with its prefix length, as `ip addr add` takes it ("10.0.0.2/24").
public struct IPv4Interface: Codable, Sendable, Hashable, CustomStringConvertible {
    public let address: IPv4Address
    public let prefixLength: Int
    public var description: String { "\(address)/\(prefixLength)" }

    public init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let prefix = Int(parts[1]), (0...32).contains(prefix) else {
            throw GodwitError("invalid IPv4 interface address \"\(text)\"", hint: "write it as a.b.c.d/prefix")
        }
        address = try IPv4Address(String(parts[0]))
        prefixLength = prefix
    }

    public init(from decoder: Decoder) throws { try self.init(try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

public struct MACAddress: Codable, Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]
    public var description: String { bytes.map { String(format: "%02x", $0) }.joined(separator: ":") }

    public init(_ text: String) throws {
        let parts = text.split(separator: ":")
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard parts.count == 6, bytes.count == 6 else {
            throw GodwitError("invalid MAC address \"\(text)\"", hint: "write it as xx:xx:xx:xx:xx:xx")
        }
        self.bytes = bytes
    }

    /// Locally administered unicast (02:...) from a hash of the name: stable for a given
    /// container on every host, so the neighbours' ARP caches stay valid after migration.
    public static func derived(from name: String) -> MACAddress {
        let hash = StableHash.fnv1a64("mac:" + name)
        let tail = (0..<5).map { UInt8(truncatingIfNeeded: hash >> (8 * UInt64($0))) }
        return try! MACAddress(([0x02] + tail).map { String(format: "%02x", $0) }.joined(separator: ":"))
    }

    public init(from decoder: Decoder) throws { try self.init(try decoder.singleValueContainer().decode(String.self)) }
    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Swift's Hasher is seeded per process; derived names must be the same everywhere.
enum StableHash {
    static func fnv1a64(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        return hash
    }
}
