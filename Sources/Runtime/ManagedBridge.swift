import API
import Foundation
import GodwitCore

/// Puts a ManagedNetwork in place in this network namespace, idempotently: `godwit init`
/// applies it so mistakes show at once, godwitd again at every start (nothing of it
/// survives a reboot). Works with `ip` and `nft`, as an administrator would.
///
/// - NAT: a bridge with the host's address, IPv4 forwarding, and an nftables table
///   `ip godwit-NAME` masquerading what leaves the bridge's network.
/// - Bridged: a bridge that takes over the uplink: the uplink becomes its port, and the
///   uplink's addresses and default route move to the bridge in one `ip -batch`. The bridge
///   takes the uplink's MAC, so the LAN's ARP entries for the host stay right (a bridge
///   left to choose takes the lowest MAC among its ports, which changes as container
///   veths come and go: peers then lose the host for tens of seconds).
public enum ManagedBridge {
    public static func ensure(_ network: ManagedNetwork, ip: [String] = ["ip"], nft: [String] = ["nft"]) throws {
        switch network.mode {
        case .nat: try ensureNAT(network, ip: ip, nft: nft)
        case .bridged: try ensureBridged(network, ip: ip)
        }
    }

    /// What `godwit network show` reports; `leases`: containers holding an address.
    public static func info(_ network: ManagedNetwork, leases: Int, ip: [String] = ["ip"]) -> NetworkInfo {
        let link = try? self.link(network.name, ip: ip)
        return NetworkInfo(name: network.name, mode: network.mode.rawValue, address: network.address?.description,
                           containers: network.leaseSubnet?.description, gateway: network.containerGateway?.description,
                           uplink: network.uplink, state: link.map { $0.up ? "up" : "down" } ?? "missing",
                           mac: link?.mac, leases: leases)
    }

    /// A bridge given with --bridge (not managed): what can be seen of it.
    public static func info(unmanaged name: String, subnet: String?, gateway: String?, leases: Int, ip: [String] = ["ip"]) -> NetworkInfo {
        let link = try? self.link(name, ip: ip)
        return NetworkInfo(name: name, mode: "unmanaged", address: nil, containers: subnet, gateway: gateway, uplink: nil,
                           state: link.map { $0.up ? "up" : "down" } ?? "missing", mac: link?.mac, leases: leases)
    }

    /// A bridged network as it ended up: the address and default route moved over from the
    /// uplink become explicit (so the containers get the LAN's prefix and router, and the
    /// next start restores both even if the uplink lost them).
    public static func settled(_ n: ManagedNetwork, ip: [String] = ["ip"]) throws -> ManagedNetwork {
        guard n.mode == .bridged else { return n }
        var settled = n
        if settled.address == nil, let first = try ipv4Addresses(n.name, ip: ip).first {
            settled.address = try InterfaceAddress(first)
        }
        if settled.gateway == nil, let gateway = try defaultGateway(n.name, ip: ip) { settled.gateway = IPv4(gateway) }
        try settled.validate()
        return settled
    }

    // MARK: NAT

    static func ensureNAT(_ n: ManagedNetwork, ip: [String], nft: [String]) throws {
        guard let address = n.address, let subnet = n.leaseSubnet else { throw GodwitError("a NAT'd bridge needs ipv4.address") }
        var lines: [String] = []
        if (try? link(n.name, ip: ip)) == nil {
            lines.append("link add \(n.name) address \(stableMAC(n.name)) type bridge")
        }
        lines += ["addr replace \(address) dev \(n.name)", "link set \(n.name) up"]
        try batch(lines, ip: ip, what: "setting up bridge \(n.name)")
        do {
            try "1\n".write(toFile: "/proc/sys/net/ipv4/ip_forward", atomically: false, encoding: .utf8)
        } catch {
            throw GodwitError("cannot enable IPv4 forwarding: \(error.localizedDescription)", hint: "run as root")
        }
        // Recreated whole each time: the first two lines make the delete succeed whether or
        // not the table existed.
        let table = "godwit-\(n.name)"
        let bridgeNet = address.subnet
        let script = """
            table ip \(table)
            delete table ip \(table)
            table ip \(table) {
                chain postrouting {
                    type nat hook postrouting priority srcnat; policy accept;
                    ip saddr \(subnet) ip daddr != \(bridgeNet) masquerade
                }
            }

            """
        let result = try Command.run(nft + ["-f", "-"], input: script)
        guard result.succeeded else {
            throw GodwitError("cannot set up NAT for \(n.name): \(result.lastErrorLine)", hint: "is nftables installed (nft)?")
        }
    }

    /// A locally administered MAC that depends only on the bridge's name (stable across
    /// restarts and container churn).
    static func stableMAC(_ name: String) -> String {
        var hash: UInt32 = 2_166_136_261
        for byte in name.utf8 { hash = (hash ^ UInt32(byte)) &* 16_777_619 }
        let bytes = [0x02, 0x67, 0x77, UInt8(hash >> 16 & 0xff), UInt8(hash >> 8 & 0xff), UInt8(hash & 0xff)]
        return bytes.map { String(format: "%02x", $0) }.joined(separator: ":")
    }

    // MARK: bridged

    static func ensureBridged(_ n: ManagedNetwork, ip: [String]) throws {
        guard let uplinkName = n.uplink else { throw GodwitError("a bridged network needs an uplink") }
        guard let uplink = try? link(uplinkName, ip: ip) else {
            throw GodwitError("the uplink \(uplinkName) does not exist", hint: "`ip link` lists this host's interfaces")
        }
        var lines: [String] = []
        if (try? link(n.name, ip: ip)) == nil {
            lines.append("link add \(n.name) address \(uplink.mac ?? stableMAC(n.name)) type bridge")
        }
        if uplink.master != n.name {
            if let master = uplink.master {
                throw GodwitError("the uplink \(uplinkName) is already a port of \(master)",
                                  hint: "use \(master) as the network's name, or take \(uplinkName) out of it")
            }
            // The uplink's addresses and default route move to the bridge, in the same batch
            // as the enslaving, so the host is off the LAN for as short a time as possible.
            let addresses = try ipv4Addresses(uplinkName, ip: ip)
            let gateway = try defaultGateway(uplinkName, ip: ip)
            lines.append("link set \(uplinkName) master \(n.name)")
            for a in addresses {
                lines.append("addr del \(a) dev \(uplinkName)")
                lines.append("addr replace \(a) dev \(n.name)")
            }
            lines += ["link set \(uplinkName) up", "link set \(n.name) up"]
            if let gateway { lines.append("route replace default via \(gateway) dev \(n.name)") }
        }
        if let address = n.address { lines.append("addr replace \(address) dev \(n.name)") }
        lines.append("link set \(n.name) up")
        try batch(lines, ip: ip, what: "bridging \(uplinkName) into \(n.name)")
    }

    // MARK: ip

    struct Link { var mac: String?; var up: Bool; var master: String? }

    static func link(_ name: String, ip: [String]) throws -> Link {
        let result = try Command.run(ip + ["-j", "link", "show", "dev", name])
        guard result.succeeded, let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]],
              let entry = list.first else { throw GodwitError("no interface \(name)") }
        let flags = entry["flags"] as? [String] ?? []
        return Link(mac: entry["address"] as? String, up: flags.contains("UP"), master: entry["master"] as? String)
    }

    static func ipv4Addresses(_ name: String, ip: [String]) throws -> [String] {
        let result = try Command.run(ip + ["-j", "-4", "addr", "show", "dev", name])
        guard result.succeeded, let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else {
            throw GodwitError("cannot read the addresses of \(name): \(result.lastErrorLine)")
        }
        return list.flatMap { ($0["addr_info"] as? [[String: Any]]) ?? [] }.compactMap { info in
            guard let local = info["local"] as? String, let prefix = info["prefixlen"] as? Int else { return nil }
            return "\(local)/\(prefix)"
        }
    }

    static func defaultGateway(_ name: String, ip: [String]) throws -> String? {
        let result = try Command.run(ip + ["-j", "-4", "route", "show", "default", "dev", name])
        guard result.succeeded, let list = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]] else {
            return nil
        }
        return list.first?["gateway"] as? String
    }

    static func batch(_ lines: [String], ip: [String], what: String) throws {
        guard !lines.isEmpty else { return }
        let result = try Command.run(ip + ["-batch", "-"], input: lines.joined(separator: "\n") + "\n")
        guard result.succeeded else { throw GodwitError("\(what) failed: \(result.lastErrorLine)") }
    }
}
