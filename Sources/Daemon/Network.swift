import Foundation
import GodwitCore

/// Chooses container addresses. Leases are persisted as the containers' ipv4 column, so
/// "free" means "not held by any container row"; the database's UNIQUE constraint settles
/// races between two launches.
public struct AddressPlan: Sendable {
    public var bridge: String
    public var subnet: Subnet
    /// The host's address on the bridge (the containers' default route); never leased.
    public var gateway: IPv4?
    /// Prefix configured on the containers' eth0. Wider than the subnet leases come from when
    /// several hosts share one L2 network (the lab's /16): everyone is then on-link and a
    /// container keeps a working address wherever it moves.
    public var prefixLength: Int

    public init(bridge: String, subnet: Subnet, gateway: IPv4?, prefixLength: Int? = nil) throws {
        if let prefixLength, !(8...subnet.prefixLength).contains(prefixLength) {
            throw GodwitError("invalid prefix length \(prefixLength) for subnet \(subnet)",
                              hint: "use 8...\(subnet.prefixLength): the containers' network must contain the subnet")
        }
        self.prefixLength = prefixLength ?? subnet.prefixLength
        if let gateway, !subnet.contains(gateway) {
            // A gateway outside the container subnet is allowed (the lab puts the host in a
            // wider fabric subnet) as long as it is a unicast address.
            guard gateway.value != 0 else { throw GodwitError("invalid gateway 0.0.0.0") }
        }
        self.bridge = bridge; self.subnet = subnet; self.gateway = gateway
    }

    /// The lowest free host address, skipping the network, broadcast and gateway addresses.
    public func nextFree(excluding used: Set<IPv4>) throws -> IPv4 {
        var candidate = subnet.network.value &+ 1
        while candidate < subnet.broadcast.value {
            let address = IPv4(candidate)
            if address != gateway, !used.contains(address) { return address }
            candidate += 1
        }
        throw GodwitError("no free address left in \(subnet)",
                          hint: "delete unused containers or give godwitd a larger --subnet")
    }

    public func lease(_ address: IPv4, mac: String) -> NetworkLease {
        NetworkLease(bridge: bridge, address: address.description, prefixLength: prefixLength,
                     gateway: gateway?.description, mac: mac)
    }
}

public enum StableMAC {
    /// A stable, locally administered unicast MAC (02:...) from the name, so a container
    /// keeps its MAC across restarts and migrations without storing anything extra.
    public static func forContainer(_ name: String) -> String {
        // FNV-1a: Swift's Hasher is seeded per process, and the MAC must not change.
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash ^= UInt64(byte)
            hash = hash &* 0x0000_0100_0000_01b3
        }
        let bytes = (0..<5).map { UInt8(truncatingIfNeeded: hash >> UInt64($0 * 8)) }
        return (["02"] + bytes.map { String(format: "%02x", $0) }).joined(separator: ":")
    }
}
