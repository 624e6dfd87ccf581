import Foundation
import GodwitCore

/// What `godwit init` decides and godwitd reads at start (its flags override it): the
/// file is LXD's preseed layout, so an LXD user's habits carry over.
///
///     config:
///       core.https_address: 10.0.0.11:8443
///       core.name: h1
///       core.state_dir: /var/lib/godwit
///       core.criu: /usr/sbin/criu
///     networks:
///     - name: gwbr0
///       config:
///         ipv4.address: 10.99.1.1/24            # the host's address on the bridge
///         ipv4.nat: "true"                      # a NAT'd private bridge, or:
///         bridge.external_interfaces: eth0      # a bridge onto the host's LAN
///         ipv4.containers: 10.99.1.0/24         # where container addresses come from
///         ipv4.gateway: 10.0.0.1                # the containers' default route
///     remotes:                                  # init only: trust other hosts
///     - name: h2
///       address: 10.0.0.12:8443
///       token: ...
public struct HostConfiguration: Equatable, Sendable {
    public var stateDir: String?
    public var name: String?
    public var https: String?
    public var criu: String?
    public var network: ManagedNetwork?
    public var remotes: [RemoteSeed] = []

    public init(stateDir: String? = nil, name: String? = nil, https: String? = nil, criu: String? = nil,
                network: ManagedNetwork? = nil, remotes: [RemoteSeed] = []) {
        self.stateDir = stateDir; self.name = name; self.https = https; self.criu = criu
        self.network = network; self.remotes = remotes
    }

    /// Where godwitd looks when not told (`--config`), and `godwit init` writes.
    public static let defaultPath = "/etc/godwit/godwitd.yaml"

    public struct RemoteSeed: Equatable, Sendable {
        public var name: String
        public var address: String
        public var token: String
        public init(name: String, address: String, token: String) { self.name = name; self.address = address; self.token = token }
    }

    // MARK: reading

    public static func read(_ path: String) throws -> HostConfiguration {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GodwitError("cannot read \(path)", hint: "run `godwit init` to write it, or give another --config")
        }
        guard let text = String(data: data, encoding: .utf8) else { throw GodwitError("\(path) is not UTF-8 text") }
        do { return try parse(text) } catch let error as GodwitError {
            throw GodwitError("\(path): \(error.message)", hint: error.hint)
        }
    }

    public static func parse(_ text: String) throws -> HostConfiguration {
        let root = try YAML.parse(text)
        if root == .null { return HostConfiguration() }
        guard case .mapping(let top) = root else { throw GodwitError("the configuration must be a mapping of sections") }
        var configuration = HostConfiguration()
        for (key, value) in top {
            switch key {
            case "config":
                for (k, v) in try mapping(value, "config") {
                    let s = try scalar(v, k)
                    switch k {
                    case "core.https_address": configuration.https = s
                    case "core.name": configuration.name = s
                    case "core.state_dir": configuration.stateDir = s
                    case "core.criu": configuration.criu = s
                    default: throw GodwitError("unknown key config.\(k)",
                                               hint: "known: core.https_address, core.name, core.state_dir, core.criu")
                    }
                }
            case "networks":
                guard case .sequence(let items) = value else { throw GodwitError("networks must be a list") }
                guard items.count <= 1 else {
                    throw GodwitError("\(items.count) networks: godwitd manages one bridge", hint: "keep one entry under networks")
                }
                configuration.network = try items.first.map(ManagedNetwork.init(yaml:))
            case "remotes":
                if value == .null { continue }
                guard case .sequence(let items) = value else { throw GodwitError("remotes must be a list") }
                guard items.count <= 64 else { throw GodwitError("at most 64 remotes") }
                configuration.remotes = try items.map { item in
                    let fields = Dictionary(try mapping(item, "remote").map { ($0.0, $0.1) }, uniquingKeysWith: { a, _ in a })
                    func field(_ name: String) throws -> String {
                        guard let v = fields[name] else { throw GodwitError("a remote needs '\(name)'") }
                        return try scalar(v, name)
                    }
                    return RemoteSeed(name: try field("name"), address: try field("address"), token: try field("token"))
                }
            default:
                throw GodwitError("unknown section '\(key)'", hint: "known: config, networks, remotes")
            }
        }
        try configuration.validate()
        return configuration
    }

    public func validate() throws {
        if let stateDir, !stateDir.hasPrefix("/") { throw GodwitError("core.state_dir must be an absolute path: '\(stateDir)'") }
        if let criu, !criu.hasPrefix("/") { throw GodwitError("core.criu must be an absolute path: '\(criu)'") }
        if let https {
            let parts = https.split(separator: ":")
            guard parts.count == 2, IPv4(String(parts[0])) != nil, let port = Int(parts[1]), (1...65535).contains(port) else {
                throw GodwitError("core.https_address must be IPV4:PORT, e.g. 10.0.0.11:8443, not '\(https)'")
            }
        }
        if let name { try ContainerName.validate(name) }
        for remote in remotes { try ContainerName.validate(remote.name) }
    }

    static func mapping(_ value: YAMLValue, _ what: String) throws -> [(String, YAMLValue)] {
        if value == .null { return [] }
        guard case .mapping(let entries) = value else { throw GodwitError("\(what) must be a mapping") }
        return entries
    }

    static func scalar(_ value: YAMLValue, _ key: String) throws -> String {
        guard case .scalar(let s) = value, !s.isEmpty else { throw GodwitError("\(key) needs a value") }
        return s
    }

    // MARK: writing

    public func yaml() -> String {
        var config: [(String, YAMLValue)] = []
        if let https { config.append(("core.https_address", .scalar(https))) }
        if let name { config.append(("core.name", .scalar(name))) }
        if let stateDir { config.append(("core.state_dir", .scalar(stateDir))) }
        if let criu { config.append(("core.criu", .scalar(criu))) }
        var top: [(String, YAMLValue)] = [("config", .mapping(config))]
        if let network { top.append(("networks", .sequence([network.yaml]))) }
        if !remotes.isEmpty {
            top.append(("remotes", .sequence(remotes.map {
                .mapping([("name", .scalar($0.name)), ("address", .scalar($0.address)), ("token", .scalar($0.token))])
            })))
        }
        return "# Written by `godwit init`; godwitd reads it at start (its flags override it).\n" + YAML.emit(.mapping(top))
    }
}

/// The bridge godwitd manages: a NAT'd private bridge, or a bridge onto an uplink so the
/// containers sit on the host's LAN (and keep their address across hosts on that LAN).
public struct ManagedNetwork: Equatable, Sendable {
    public enum Mode: String, Sendable, CaseIterable { case nat, bridged }

    public var name: String
    public var mode: Mode
    /// The host's address on the bridge. Bridged: optional (the uplink's is moved over).
    public var address: InterfaceAddress?
    /// Where container addresses are leased from (default: the bridge's network, for NAT).
    public var containers: Subnet?
    /// The containers' default route (default: the host for NAT; the uplink's gateway).
    public var gateway: IPv4?
    /// Bridged: the interface put into the bridge.
    public var uplink: String?

    public init(name: String, mode: Mode, address: InterfaceAddress?, containers: Subnet? = nil, gateway: IPv4? = nil,
                uplink: String? = nil) throws {
        self.name = name; self.mode = mode; self.address = address; self.containers = containers
        self.gateway = gateway; self.uplink = uplink
        try validate()
    }

    public func validate() throws {
        guard Self.isInterfaceName(name) else {
            throw GodwitError("invalid bridge name '\(name)'", hint: "1-15 characters: letters, digits, '-', '_' or '.'")
        }
        switch mode {
        case .nat:
            guard let address else { throw GodwitError("a NAT'd bridge needs ipv4.address, e.g. 10.99.1.1/24") }
            if uplink != nil { throw GodwitError("bridge.external_interfaces and ipv4.nat exclude each other") }
            if let containers, !address.subnet.contains(containers.network) {
                throw GodwitError("ipv4.containers \(containers) is outside the bridge's network \(address.subnet)")
            }
        case .bridged:
            guard let uplink, Self.isInterfaceName(uplink) else {
                throw GodwitError("a bridged network needs bridge.external_interfaces (the uplink), e.g. eth0")
            }
            guard containers != nil else {
                throw GodwitError("a bridged network needs ipv4.containers: the part of the LAN this host leases to containers",
                                  hint: "give each host its own range, e.g. 192.168.1.64/27 on one and .96/27 on the other")
            }
        }
    }

    static func isInterfaceName(_ s: String) -> Bool {
        (1...15).contains(s.utf8.count) && s.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "-_.".contains($0)) }
            && s != "." && s != ".."
    }

    /// The subnet containers lease from.
    public var leaseSubnet: Subnet? { containers ?? address?.subnet }
    /// The containers' default route.
    public var containerGateway: IPv4? { gateway ?? (mode == .nat ? address?.address : nil) }
    /// The prefix on the containers' eth0: the whole segment's, so they reach every host
    /// and container on it directly.
    public var containerPrefixLength: Int? { address?.prefixLength ?? containers?.prefixLength }

    init(yaml value: YAMLValue) throws {
        let entries = try HostConfiguration.mapping(value, "a network")
        var name: String?
        var config: [(String, YAMLValue)] = []
        for (k, v) in entries {
            switch k {
            case "name": name = try HostConfiguration.scalar(v, "name")
            case "type": guard try HostConfiguration.scalar(v, "type") == "bridge" else { throw GodwitError("only type: bridge networks") }
            case "description": continue
            case "config": config = try HostConfiguration.mapping(v, "network config")
            default: throw GodwitError("unknown network key '\(k)'", hint: "known: name, type, description, config")
            }
        }
        var address: InterfaceAddress?, containers: Subnet?, gateway: IPv4?, uplink: String?, nat = false
        for (k, v) in config {
            let s = try HostConfiguration.scalar(v, k)
            switch k {
            case "ipv4.address": address = try InterfaceAddress(s)
            case "ipv4.nat":
                guard let b = ["true": true, "false": false][s.lowercased()] else { throw GodwitError("ipv4.nat is true or false, not '\(s)'") }
                nat = b
            case "ipv4.containers": containers = try Subnet(s)
            case "ipv4.gateway":
                guard let g = IPv4(s) else { throw GodwitError("invalid ipv4.gateway '\(s)'") }
                gateway = g
            case "bridge.external_interfaces": uplink = s
            default:
                throw GodwitError("unknown network config key '\(k)'",
                                  hint: "known: ipv4.address, ipv4.nat, ipv4.containers, ipv4.gateway, bridge.external_interfaces")
            }
        }
        guard let name else { throw GodwitError("a network needs a name") }
        if nat && uplink != nil { throw GodwitError("bridge.external_interfaces and ipv4.nat exclude each other") }
        try self.init(name: name, mode: uplink != nil ? .bridged : .nat, address: address, containers: containers,
                      gateway: gateway, uplink: uplink)
    }

    var yaml: YAMLValue {
        var config: [(String, YAMLValue)] = []
        if let address { config.append(("ipv4.address", .scalar(address.description))) }
        if mode == .nat { config.append(("ipv4.nat", .scalar("true"))) }
        if let uplink { config.append(("bridge.external_interfaces", .scalar(uplink))) }
        if let containers { config.append(("ipv4.containers", .scalar(containers.description))) }
        if let gateway { config.append(("ipv4.gateway", .scalar(gateway.description))) }
        return .mapping([("name", .scalar(name)), ("type", .scalar("bridge")), ("config", .mapping(config))])
    }
}

/// What `godwit network list|show` prints.
public struct NetworkInfo: Codable, Sendable, Equatable {
    public var name: String
    /// "nat", "bridged", or "unmanaged" (a bridge given with --bridge).
    public var mode: String
    public var address: String?
    public var containers: String?
    public var gateway: String?
    public var uplink: String?
    /// "up", "down" or "missing".
    public var state: String
    public var mac: String?
    /// Containers holding an address from it.
    public var leases: Int

    public init(name: String, mode: String, address: String?, containers: String?, gateway: String?, uplink: String?,
                state: String, mac: String?, leases: Int) {
        self.name = name; self.mode = mode; self.address = address; self.containers = containers; self.gateway = gateway
        self.uplink = uplink; self.state = state; self.mac = mac; self.leases = leases
    }
}

/// `godwit check --peer REMOTE`: the link to a remote, measured, and whether a container's
/// address stays reachable when it moves there.
public struct PeerLinkReport: Codable, Sendable, Equatable {
    public var remote: String
    /// Median of a few HTTPS round trips (mutual TLS, connection reused).
    public var roundTripMillis: Double
    /// One transfer from the remote over HTTPS.
    public var throughputMbitPerSecond: Double
    public var probeBytes: Int
    public var local: NetworkInfo?
    public var peer: NetworkInfo?
    public var addressesPortable: Bool
    public var reason: String
    public var warnings: [String]

    public init(remote: String, roundTripMillis: Double, throughputMbitPerSecond: Double, probeBytes: Int,
                local: NetworkInfo?, peer: NetworkInfo?) {
        self.remote = remote; self.roundTripMillis = roundTripMillis; self.throughputMbitPerSecond = throughputMbitPerSecond
        self.probeBytes = probeBytes; self.local = local; self.peer = peer
        (addressesPortable, reason, warnings) = Self.portability(local: local, peer: peer, remote: remote)
    }

    /// Whether an address leased here answers on the remote after a move, from the two
    /// hosts' networks alone: both must bridge onto the same segment (same network, same
    /// prefix). NAT keeps addresses private to their host; different subnets need routing
    /// of each container's /32, which Godwit does not do yet.
    public static func portability(local: NetworkInfo?, peer: NetworkInfo?, remote: String) -> (Bool, String, [String]) {
        guard let local else { return (false, "this host has no container network", []) }
        guard let peer else { return (false, "\(remote) has no container network", []) }
        for (host, n) in [("this host", local), (remote, peer)] where n.mode == "nat" {
            return (false, "\(host) puts containers behind NAT (\(n.name)): their addresses are private to it", [])
        }
        guard let a = local.address.flatMap({ try? InterfaceAddress($0) }), let b = peer.address.flatMap({ try? InterfaceAddress($0) }) else {
            return (false, "the bridges' addresses are unknown (a bridge not managed by godwit init), so nothing can be said", [])
        }
        guard a.subnet == b.subnet else {
            return (false, "this host is on \(a.subnet), \(remote) on \(b.subnet): a moved container's address would need a route (not built yet)", [])
        }
        var warnings: [String] = []
        if let x = local.containers.flatMap({ try? Subnet($0) }), let y = peer.containers.flatMap({ try? Subnet($0) }),
           x.contains(y.network) || y.contains(x.network) {
            warnings.append("both hosts lease container addresses from overlapping ranges (\(x), \(y)): two containers could get the same address")
        }
        return (true, "both hosts bridge onto \(a.subnet): a moved container keeps its address and answers on \(remote)", warnings)
    }
}
