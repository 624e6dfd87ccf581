import Foundation
import GodwitCore

/// A lab's name. Everything a lab creates (network namespaces, cgroups, state directory)
/// carries it, so parallel labs never collide and `lab down` finds leftovers by name alone.
/// No dashes allowed: that keeps "godwit-lab-" from being a prefix of "godwit-lab2-".
public struct LabName: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public static let defaultName = "lab"

    public init(_ text: String) throws {
        guard LabName.isValid(text) else {
            throw GodwitError("invalid lab name '\(text)'",
                              hint: "use 1 to 8 characters: a lowercase letter, then lowercase letters or digits (e.g. lab, lab2)")
        }
        rawValue = text
    }

    public static func isValid(_ text: String) -> Bool {
        guard let first = text.unicodeScalars.first, text.unicodeScalars.count <= 8,
              ("a"..."z").contains(first) else { return false }
        return text.unicodeScalars.allSatisfy { ("a"..."z").contains($0) || ("0"..."9").contains($0) }
    }

    /// Every network namespace of this lab starts with this.
    public var netnsPrefix: String { "godwit-\(rawValue)-" }
    public var fabricNetns: String { netnsPrefix + "fabric" }
    public var clientNetns: String { netnsPrefix + "client" }
    public func hostNetns(_ index: Int) -> String { netnsPrefix + LabHost.name(index) }

    /// Only the names a lab creates, so `down` never takes another component's
    /// "godwit-<word>-..." namespace for one of ours.
    public func owns(netns: String) -> Bool {
        guard netns.hasPrefix(netnsPrefix) else { return false }
        let role = String(netns.dropFirst(netnsPrefix.count))
        return role == "fabric" || role == "client" || LabHost.index(of: role) != nil
    }
    /// The host's cgroup directory name in every hierarchy.
    public func hostCgroup(_ index: Int) -> String { netnsPrefix + LabHost.name(index) }

    public var description: String { rawValue }
    public static func < (lhs: LabName, rhs: LabName) -> Bool { lhs.rawValue < rhs.rawValue }

    public init(from decoder: Decoder) throws {
        try self.init(try decoder.singleValueContainer().decode(String.self))
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(rawValue)
    }
}

/// One /16 per lab. Labs are isolated L2 segments with no route to the root namespace, so
/// every lab reuses the same range. Host i's containers get 10.77.i.0/24, so each host's
/// daemon allocates addresses without asking anyone, and a container keeps its address
/// when it moves because all hosts share one L2 segment.
public enum LabAddressing {
    public static let network = "10.77.0.0"
    public static let prefixLength = 16
    public static let clientAddress = "10.77.0.2"
    public static func hostAddress(_ index: Int) -> String { "10.77.0.\(10 + index)" }
    public static func containerSubnet(_ index: Int) -> String { "10.77.\(index).0/24" }
    public static func firstContainerAddress(_ index: Int) -> String { "10.77.\(index).1" }
    public static func lastContainerAddress(_ index: Int) -> String { "10.77.\(index).254" }
}

/// Something with a network namespace and an address on the fabric: a host or the client.
public struct LabEndpoint: Codable, Sendable, Equatable {
    /// "h1".."h16" or "client".
    public var name: String
    public var netns: String
    /// What `nsenter --net=` and setns(2) want.
    public var netnsPath: String
    public var address: String
    public var prefixLength: Int
    /// The veth end inside the endpoint's namespace.
    public var uplink: String
    /// The veth end in the fabric namespace, enslaved to the fabric bridge.
    public var fabricPort: String

    /// argv that runs `argv` inside this endpoint's network namespace (and nothing else:
    /// unlike `ip netns exec`, nsenter leaves /sys and the mount namespace alone).
    public func command(_ argv: [String]) -> [String] {
        LabNamespace.enter(netns) + argv
    }
}

/// A simulated host: everything a daemon started inside it needs.
public struct LabHost: Codable, Sendable, Equatable {
    public var index: Int
    public var endpoint: LabEndpoint
    /// The container bridge. It is also the host's own interface (address on it) and
    /// enslaves the uplink, so containers attached here sit on the lab-wide L2 segment.
    public var bridge: String
    /// Where the host's daemon keeps its files.
    public var stateDirectory: String
    public var cgroups: HostCgroups
    public var containerSubnet: String
    public var firstContainerAddress: String
    public var lastContainerAddress: String
    /// Prefix length to give container interfaces: the whole lab /16 is on-link.
    public var containerPrefixLength: Int

    public var name: String { endpoint.name }
    public var netns: String { endpoint.netns }
    public var netnsPath: String { endpoint.netnsPath }
    public var address: String { endpoint.address }

    /// Where the host's daemon listens. The root network namespace has no route into a
    /// lab, so the CLI reaches daemons through the shared filesystem, not TCP.
    public var daemonSocket: String { stateDirectory + "/unix.socket" }

    public static func name(_ index: Int) -> String { "h\(index)" }

    /// "h3" → 3; nil for anything else.
    public static func index(of name: String) -> Int? {
        guard name.hasPrefix("h"), let index = Int(name.dropFirst()), index >= 1,
              name == LabHost.name(index) else { return nil }
        return index
    }
}

/// A host's cgroup directories: one per v1 hierarchy (co-mounted controllers share one) and
/// one in the cgroup2 hierarchy. Containers go in subdirectories.
public struct HostCgroups: Codable, Sendable, Equatable {
    /// Same in every hierarchy; "/" + name is CRIU's `--cgroup-root`.
    public var name: String
    /// v1 controller → directory, e.g. "freezer" → /sys/fs/cgroup/freezer/godwit-lab-h1.
    public var v1: [String: String]
    /// The directory in the cgroup2 hierarchy (/sys/fs/cgroup/unified/... on hybrid hosts).
    public var unified: String?

    public var directories: [String] {
        Array(Set(v1.values)).sorted() + (unified.map { [$0] } ?? [])
    }
}

/// The lab: N hosts and a client on one fabric bridge, each in its own network namespace.
/// Derivable from the name and host count alone; lab.json only adds what can't be
/// derived (when and with which rate it was created).
public struct Lab: Codable, Sendable {
    public static let maxHosts = 16
    public static let fabricBridge = "fabric"
    public static let hostBridge = "br0"
    public static let uplink = "uplink"

    public var name: LabName
    public var fabricNetns: String
    public var client: LabEndpoint
    public var hosts: [LabHost]
    public var stateDirectory: String
    public var network: String
    public var prefixLength: Int
    /// The rate given to `lab up --bandwidth` (nil: unshaped). `lab status` shows the live one.
    public var initialBandwidth: Bandwidth?
    /// ISO 8601, UTC: readable by scripts without knowing Foundation's reference date.
    public var createdAt: String?

    /// Computes names, addresses and paths; creates nothing.
    public static func plan(name: LabName, hosts count: Int, stateRoot: String = LabPaths.stateRoot,
                            cgroups: CgroupLayout = .lab(), bandwidth: Bandwidth? = nil) throws -> Lab {
        try validate(hostCount: count)
        let labDir = LabPaths.labDirectory(name, stateRoot: stateRoot)
        let hosts = (1...count).map { index -> LabHost in
            let hostName = LabHost.name(index)
            let endpoint = LabEndpoint(
                name: hostName, netns: name.hostNetns(index), netnsPath: LabNamespace.path(name.hostNetns(index)),
                address: LabAddressing.hostAddress(index), prefixLength: LabAddressing.prefixLength,
                uplink: uplink, fabricPort: hostName)
            return LabHost(
                index: index, endpoint: endpoint, bridge: hostBridge,
                stateDirectory: labDir + "/" + hostName,
                cgroups: cgroups.directories(named: name.hostCgroup(index)),
                containerSubnet: LabAddressing.containerSubnet(index),
                firstContainerAddress: LabAddressing.firstContainerAddress(index),
                lastContainerAddress: LabAddressing.lastContainerAddress(index),
                containerPrefixLength: LabAddressing.prefixLength)
        }
        let client = LabEndpoint(
            name: "client", netns: name.clientNetns, netnsPath: LabNamespace.path(name.clientNetns),
            address: LabAddressing.clientAddress, prefixLength: LabAddressing.prefixLength,
            uplink: uplink, fabricPort: "client")
        return Lab(name: name, fabricNetns: name.fabricNetns, client: client, hosts: hosts,
                   stateDirectory: labDir, network: "\(LabAddressing.network)/\(LabAddressing.prefixLength)",
                   prefixLength: LabAddressing.prefixLength, initialBandwidth: bandwidth, createdAt: nil)
    }

    public static func validate(hostCount: Int) throws {
        if hostCount > maxHosts {
            throw GodwitError("too many hosts: \(hostCount) (a lab has at most \(maxHosts))",
                              hint: "use --hosts 1...\(maxHosts), or several labs with different --name")
        }
        if hostCount < 1 {
            throw GodwitError("a lab needs at least 1 host (got \(hostCount))", hint: "use --hosts 1...\(maxHosts)")
        }
    }

    public var endpoints: [LabEndpoint] { hosts.map(\.endpoint) + [client] }

    /// "h2" (or "2") → that host.
    public func host(named text: String) throws -> LabHost {
        let key = text.hasPrefix("h") ? text : "h" + text
        guard let host = hosts.first(where: { $0.name == key }) else {
            throw GodwitError("lab '\(name)' has no host '\(text)'",
                              hint: "hosts are \(hosts.map(\.name).joined(separator: ", ")); see `godwit lab status --name \(name)`")
        }
        return host
    }

    /// A host or "client".
    public func endpoint(named text: String) throws -> LabEndpoint {
        if text == "client" { return client }
        do {
            return try host(named: text).endpoint
        } catch var error as GodwitError {
            error.hint = "use client or one of \(hosts.map(\.name).joined(separator: ", "))"
            throw error
        }
    }
}

/// Where labs keep files. The root is overridable so tests and parallel checkouts don't
/// share /var/lib.
public enum LabPaths {
    public static let defaultStateRoot = "/var/lib/godwit/labs"
    public static let rootVariable = "GODWIT_LAB_ROOT"
    /// Written first by `up`, so `down` knows a directory is a lab's before deleting it.
    public static let markerFile = ".godwit-lab"
    public static let descriptionFile = "lab.json"

    public static var stateRoot: String {
        let value = ProcessInfo.processInfo.environment[rootVariable] ?? ""
        return value.isEmpty ? defaultStateRoot : value
    }

    /// `--dir` / GODWIT_DIR: "LAB/hN" names a lab host's daemon; anything else is a path.
    public static func daemonDirectory(_ text: String) -> String {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        guard parts.count == 2, let lab = try? LabName(parts[0]), LabHost.index(of: parts[1]) != nil else { return text }
        return labDirectory(lab) + "/" + parts[1]
    }

    public static func labDirectory(_ name: LabName, stateRoot: String = stateRoot) -> String {
        (stateRoot.hasSuffix("/") ? String(stateRoot.dropLast()) : stateRoot) + "/" + name.rawValue
    }
}
