import Foundation
import GodwitCore

/// The network namespace that holds the bridges. A lab host's daemon runs inside that
/// host's namespace (`.current`); tests and tools outside it name it by path.
public struct NetworkNamespace: Codable, Sendable, Equatable {
    /// nil: the caller's own namespace.
    public let path: String?

    public static let current = NetworkNamespace(path: nil)
    public static func named(_ name: String) -> NetworkNamespace { NetworkNamespace(path: "/run/netns/" + name) }

    public init(path: String?) { self.path = path }

    /// argv run inside this namespace. nsenter, not `ip netns exec`, which remounts /sys.
    public func wrap(_ argv: [String]) -> [String] {
        guard let path else { return argv }
        return ["nsenter", "--net=" + path] + argv
    }
}

/// A container's eth0: a veth pair whose host end is enslaved to the bridge. Created from
/// the host side once the init exists (its netns is /proc/PID/ns/net) and configured
/// before the init runs, so the workload never sees a missing network.
public struct Veth: Codable, Sendable, Equatable {
    /// The host end's name, derived from the container name: the same on every host, so
    /// CRIU's `--external veth[eth0]:NAME@BRIDGE` can be written without a lookup.
    public let hostName: String
    public let mac: MACAddress
    public static let containerName = "eth0"

    public init(containerName: String, mac: MACAddress? = nil) {
        let hash = StableHash.fnv1a64("veth:" + containerName)
        // IFNAMSIZ is 16: "gw" + 12 hex digits stays well inside it.
        hostName = "gw" + String(String(hash, radix: 16).leftPadded(to: 16).prefix(12))
        self.mac = mac ?? MACAddress.derived(from: containerName)
    }

    /// Creates the pair with the peer born inside `pid`'s netns, then configures both ends.
    public func attach(initPID pid: pid_t, network: NetworkSpec, in host: NetworkNamespace) throws {
        let ip = try Command.resolve("ip")
        // The previous incarnation's pair dies with its netns, asynchronously: right after a
        // stop (or a CRIU dump) the old host end may still be there under the same name.
        try remove(in: host)
        try Command.check(host.wrap([ip, "link", "add", hostName, "type", "veth", "peer", "name", Self.containerName,
                                     "address", mac.description, "netns", String(pid)]),
                          hint: "is `ip` (iproute2) installed, and is \(hostName) free?")
        do {
            try Command.check(host.wrap([ip, "link", "set", hostName, "master", network.bridge, "up"]),
                              hint: "does bridge \(network.bridge) exist in the host's network namespace?")
            var script = ["link set lo up", "addr add \(network.address) dev \(Self.containerName)",
                          "link set \(Self.containerName) up"]
            // onlink: the gateway may sit outside the container's subnet (a lab host's address
            // on the wider fabric); without it the kernel refuses the route ("Nexthop has
            // invalid gateway") unless the gateway is inside eth0's prefix.
            if let gateway = network.gateway {
                script.append("route add default via \(gateway) dev \(Self.containerName) onlink")
            }
            try Command.check(["nsenter", "--net=/proc/\(pid)/ns/net", ip, "-batch", "-"],
                              input: script.joined(separator: "\n") + "\n")
        } catch {
            try? remove(in: host)
            throw error
        }
    }

    /// The container's end while it waits in the host's namespace for CRIU to move it in.
    public var waitingPeerName: String { "gp" + hostName.dropFirst(2) }

    /// Makes the pair in the host's namespace, host end up on `bridge`, for a restore that
    /// moves the peer in (`VethMapping.precreatedPeer`); returns the peer's name.
    public func precreate(bridge: String, in host: NetworkNamespace) throws -> String {
        let ip = try Command.resolve("ip")
        try remove(in: host)
        try Command.check(host.wrap([ip, "link", "add", hostName, "type", "veth", "peer", "name", waitingPeerName,
                                     "address", mac.description]),
                          hint: "is \(hostName) free?")
        do {
            try Command.check(host.wrap([ip, "link", "set", hostName, "master", bridge, "up"]),
                              hint: "does bridge \(bridge) exist in the host's network namespace?")
        } catch {
            try? remove(in: host)
            throw error
        }
        return waitingPeerName
    }

    /// Deletes the host end (which takes the peer with it); fine if it is already gone,
    /// as it is once the container's netns died.
    public func remove(in host: NetworkNamespace) throws {
        guard exists(in: host) else { return }
        let result = try Command.run(host.wrap([try Command.resolve("ip"), "link", "del", hostName]))
        if !result.succeeded && exists(in: host) {
            throw GodwitError("cannot delete veth \(hostName): \(result.lastErrorLine)")
        }
    }

    public func exists(in host: NetworkNamespace) -> Bool {
        guard let ip = try? Command.resolve("ip"),
              let result = try? Command.run(host.wrap([ip, "link", "show", "dev", hostName])) else { return false }
        return result.succeeded
    }
}

extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}

/// Telling a segment that a container's address now sits behind another port.
public enum AddressAnnouncement {
    /// A gratuitous ARP from inside the container's network namespace teaches the switches
    /// (and refreshes peers' caches) before a peer's next packet goes to the old port.
    /// busybox's arping: these hosts have no iputils.
    public static func gratuitousARP(initPID: pid_t, address: String, interface: String = Veth.containerName) {
        _ = try? Command.run(["nsenter", "--net=/proc/\(initPID)/ns/net", "busybox", "arping", "-U", "-c", "1", "-w", "1",
                              "-I", interface, address])
    }
}
