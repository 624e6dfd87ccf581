import Foundation
import GodwitCore

/// A lab as it is now: read from the kernel (namespaces, qdiscs, cgroups), not from lab.json,
/// so it shows `lab shape` changes and half-removed labs truthfully.
public struct LabStatus: Codable, Sendable {
    public var name: LabName
    /// All of the lab's namespaces exist.
    public var running: Bool
    public var network: String
    public var stateDirectory: String?
    public var createdAt: String?
    public var cgroupMode: CgroupLayout.Kind
    public var client: EndpointStatus
    public var hosts: [HostStatus]
    /// Namespaces, cgroups or directories that exist although the lab isn't complete.
    public var leftovers: LabLeftovers

    public struct EndpointStatus: Codable, Sendable {
        public var name: String
        public var netns: String
        public var present: Bool
        public var address: String
        /// "unlimited" or a rate like "1gbit".
        public var rate: String
        public var bitsPerSecond: UInt64?
    }

    public struct HostStatus: Codable, Sendable {
        public var endpoint: EndpointStatus
        public var bridge: String
        public var containerSubnet: String
        public var stateDirectory: String
        public var cgroups: [String]
        /// Processes in the host's cgroups (its daemon and containers).
        public var processes: Int
    }

    public static func collect(_ name: LabName, stateRoot: String = LabPaths.stateRoot) -> LabStatus {
        let hierarchies = CgroupLayout.lab()
        let leftovers = LabLeftovers.find(name, stateRoot: stateRoot, hierarchies: hierarchies)
        let lab = (try? Lab.load(name: name, stateRoot: stateRoot)) ?? derivedLab(name, leftovers, stateRoot, hierarchies)
        func endpointStatus(_ endpoint: LabEndpoint) -> EndpointStatus {
            let present = LabNamespace.exists(endpoint.netns)
            let rate = present ? LabShaper.current(of: endpoint) : nil
            return EndpointStatus(name: endpoint.name, netns: endpoint.netns, present: present, address: endpoint.address,
                                  rate: rate?.description ?? (present ? "unlimited" : "-"), bitsPerSecond: rate?.bitsPerSecond)
        }
        let hosts = lab.hosts.map { host -> HostStatus in
            let cgroups = host.cgroups.directories.filter { FileManager.default.fileExists(atPath: $0) }
            let processes = Set(cgroups.flatMap { LabCgroups.subtree($0) }.flatMap { LabCgroups.processes(in: $0) }).count
            return HostStatus(endpoint: endpointStatus(host.endpoint), bridge: host.bridge, containerSubnet: host.containerSubnet,
                              stateDirectory: host.stateDirectory, cgroups: cgroups, processes: processes)
        }
        let client = endpointStatus(lab.client)
        let running = LabNamespace.exists(lab.fabricNetns) && client.present && hosts.allSatisfy(\.endpoint.present)
        return LabStatus(name: name, running: running, network: lab.network, stateDirectory: leftovers.stateDirectory,
                         createdAt: lab.createdAt, cgroupMode: hierarchies.kind, client: client, hosts: hosts,
                         leftovers: leftovers)
    }

    /// For a lab without a fabric namespace: as many hosts as any trace of it shows.
    private static func derivedLab(_ name: LabName, _ leftovers: LabLeftovers, _ stateRoot: String,
                                   _ hierarchies: CgroupLayout) -> Lab {
        let suffixes = leftovers.namespaces.map { String($0.dropFirst(name.netnsPrefix.count)) }
            + leftovers.cgroups.map { String(($0 as NSString).lastPathComponent.dropFirst(name.netnsPrefix.count)) }
        let count = min(max(suffixes.compactMap(LabHost.index(of:)).max() ?? 1, 1), Lab.maxHosts)
        // plan only fails for a bad host count, which min/max rule out.
        return try! Lab.plan(name: name, hosts: count, stateRoot: stateRoot, cgroups: hierarchies)
    }

    /// A table for people.
    public var humanDescription: String {
        var lines: [String] = []
        let state = running ? "running" : (leftovers.isEmpty ? "absent" : "incomplete (run `godwit lab down --name \(name)`)")
        lines.append("lab \(name): \(state), network \(network), cgroups \(cgroupMode.rawValue)"
                     + (createdAt.map { ", created \($0)" } ?? ""))
        if let stateDirectory { lines.append("state: \(stateDirectory)") }
        var table = TextTable(header: ["host", "netns", "address", "rate", "containers", "procs"])
        for host in hosts {
            let endpoint = host.endpoint
            table.add([endpoint.name, endpoint.netns, endpoint.present ? endpoint.address : "(missing)", endpoint.rate,
                       host.containerSubnet, "\(host.processes)"])
        }
        table.add([client.name, client.netns, client.present ? client.address : "(missing)", client.rate, "-", "-"])
        lines.append(table.render())
        return lines.joined(separator: "\n")
    }
}
