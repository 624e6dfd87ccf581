import Foundation

/// An IPv4 address as a number, so subnets are arithmetic.
public struct IPv4: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var value: UInt32

    public init(_ value: UInt32) { self.value = value }

    public init?(_ text: String) {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, let octet = UInt8(part) else { return nil }
            value = value << 8 | UInt32(octet)
        }
        self.value = value
    }

    public var description: String {
        [24, 16, 8, 0].map { String((value >> UInt32($0)) & 0xff) }.joined(separator: ".")
    }

    public static func < (a: IPv4, b: IPv4) -> Bool { a.value < b.value }
}

/// The container subnet given with `--subnet 10.77.1.0/24`.
public struct Subnet: Sendable, Equatable, CustomStringConvertible {
    public var network: IPv4
    public var prefixLength: Int

    public init(_ text: String) throws {
        let parts = text.split(separator: "/")
        guard parts.count == 2, let address = IPv4(String(parts[0])), let length = Int(parts[1]),
              (8...30).contains(length) else {
            throw GodwitError("invalid subnet '\(text)'", hint: "use CIDR notation with a prefix of 8-30, e.g. 10.77.1.0/24")
        }
        let mask: UInt32 = length == 0 ? 0 : ~UInt32(0) << UInt32(32 - length)
        guard address.value & mask == address.value else {
            throw GodwitError("invalid subnet '\(text)': host bits are set",
                              hint: "did you mean \(IPv4(address.value & mask))/\(length)?")
        }
        network = address
        prefixLength = length
    }

    public var mask: UInt32 { ~UInt32(0) << UInt32(32 - prefixLength) }
    public var broadcast: IPv4 { IPv4(network.value | ~mask) }
    public func contains(_ address: IPv4) -> Bool { address.value & mask == network.value }
    public var description: String { "\(network)/\(prefixLength)" }
}

/// An address on an interface with its prefix, e.g. the host's `10.99.1.1/24` on a
/// bridge (host bits set, unlike a Subnet).
public struct InterfaceAddress: Sendable, Equatable, CustomStringConvertible {
    public var address: IPv4
    public var prefixLength: Int

    public init(_ text: String) throws {
        let parts = text.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count == 2, let address = IPv4(String(parts[0])), let length = Int(parts[1]), (8...30).contains(length) else {
            throw GodwitError("invalid address '\(text)'", hint: "use ADDRESS/PREFIX with a prefix of 8-30, e.g. 10.99.1.1/24")
        }
        self.address = address
        prefixLength = length
        let subnet = self.subnet
        guard address != subnet.network, address != subnet.broadcast else {
            throw GodwitError("invalid address '\(text)': it is the network's own or broadcast address",
                              hint: "use a host address, e.g. \(IPv4(subnet.network.value &+ 1))/\(length)")
        }
    }

    /// The network the address is in.
    public var subnet: Subnet {
        let mask = ~UInt32(0) << UInt32(32 - prefixLength)
        // Cannot fail: the prefix was checked and the host bits are masked off.
        return try! Subnet("\(IPv4(address.value & mask))/\(prefixLength)")
    }

    public var description: String { "\(address)/\(prefixLength)" }
}
