import Foundation
import GodwitCore

/// Builds the lab's wiring. Nothing goes in the root network namespace: veth pairs are
/// created between lab namespaces directly, so interface names (h1, uplink, br0) repeat in
/// every lab without colliding, and deleting the namespaces removes every link.
///
///     client ns: uplink ──┐
///     h1 ns: br0{uplink} ─┼── fabric ns: bridge "fabric"{client, h1, h2, ...}
///     h2 ns: br0{uplink} ─┘
///
/// Each host's br0 is made by `godwit init` (see LabDaemons.initialize), not here.
public enum LabNetwork {
    public static func build(_ lab: Lab) throws {
        try LabNamespace.add(lab.fabricNetns)
        try batch(lab.fabricNetns, [
            "link set lo up",
            "link add \(Lab.fabricBridge) type bridge",
            "link set \(Lab.fabricBridge) up",
        ])
        for endpoint in lab.endpoints {
            try LabNamespace.add(endpoint.netns)
            try batch(lab.fabricNetns, [
                "link add \(endpoint.fabricPort) type veth peer name \(endpoint.uplink) netns \(endpoint.netns)",
                "link set \(endpoint.fabricPort) master \(Lab.fabricBridge)",
                "link set \(endpoint.fabricPort) up",
            ])
        }
        for host in lab.hosts {
            // A machine as it comes: its address on its uplink. `godwit init --preseed`
            // (LabDaemons.initialize) then bridges the uplink and moves the address to the
            // bridge, as on a real host (docs/two-hosts.md).
            try batch(host.netns, [
                "link set lo up",
                "link set \(host.endpoint.uplink) up",
                "addr add \(host.address)/\(host.endpoint.prefixLength) dev \(host.endpoint.uplink)",
            ])
        }
        try batch(lab.client.netns, [
            "link set lo up",
            "link set \(lab.client.uplink) up",
            "addr add \(lab.client.address)/\(lab.client.prefixLength) dev \(lab.client.uplink)",
        ])
    }

    /// One `ip -batch` per namespace: a dozen fewer processes per host than one `ip` per line.
    static func batch(_ netns: String, _ lines: [String]) throws {
        let result = try Command.run(LabNamespace.enter(netns) + ["ip", "-batch", "-"],
                                     input: lines.joined(separator: "\n") + "\n")
        guard result.succeeded else {
            // ip reports the kernel's reason, then "Command failed -:N": name the line itself.
            let stderr = result.stderr.split(separator: "\n").map(String.init)
            let failed = stderr.compactMap { line -> String? in
                guard let range = line.range(of: "-:"), let number = Int(line[range.upperBound...]),
                      lines.indices.contains(number - 1) else { return nil }
                return "ip " + lines[number - 1]
            }.first ?? "ip -batch"
            let reason = stderr.first(where: { !$0.hasPrefix("Command failed") }) ?? result.lastErrorLine
            throw GodwitError("`\(failed)` failed: \(reason)",
                              hint: "is something else using these names? `godwit lab down` removes a lab's leftovers",
                              context: [("netns", netns)])
        }
    }
}

/// tbf on both ends of an endpoint's fabric link: the uplink's egress shapes what the host
/// sends, the fabric port's egress what it receives. (netem doesn't exist on this kernel, so
/// there is no latency or loss emulation.)
public enum LabShaper {
    public static let latency = "50ms"

    public static func apply(_ rate: LinkRate, to endpoint: LabEndpoint, in lab: Lab) throws {
        for (netns, device) in links(of: endpoint, in: lab) {
            switch rate {
            case .limited(let bandwidth):
                try LabNamespace.check(netns, [
                    "tc", "qdisc", "replace", "dev", device, "root", "tbf",
                    "rate", bandwidth.tcRate, "burst", "\(bandwidth.tbfBurstBytes)", "latency", latency,
                ], hint: "is the tbf qdisc available (`modprobe sch_tbf`)?")
            case .unlimited:
                // Deleting a root qdisc that isn't there is an error in tc; unshaped is the goal.
                if rootTBF(netns: netns, device: device) != nil {
                    try LabNamespace.check(netns, ["tc", "qdisc", "del", "dev", device, "root"])
                }
            }
        }
    }

    /// The rate on the endpoint's uplink, nil when unshaped (or when the lab is gone).
    public static func current(of endpoint: LabEndpoint) -> Bandwidth? {
        rootTBF(netns: endpoint.netns, device: endpoint.uplink)
    }

    static func links(of endpoint: LabEndpoint, in lab: Lab) -> [(netns: String, device: String)] {
        [(endpoint.netns, endpoint.uplink), (lab.fabricNetns, endpoint.fabricPort)]
    }

    /// Reads tc's JSON, where tbf's rate is in bytes per second.
    static func rootTBF(netns: String, device: String) -> Bandwidth? {
        guard let result = try? LabNamespace.run(netns, ["tc", "-j", "qdisc", "show", "dev", device]),
              result.succeeded,
              let qdiscs = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [[String: Any]],
              let tbf = qdiscs.first(where: { $0["kind"] as? String == "tbf" && $0["root"] as? Bool == true }),
              let options = tbf["options"] as? [String: Any],
              let bytes = (options["rate64"] ?? options["rate"]) as? NSNumber
        else { return nil }
        return Bandwidth(bitsPerSecond: bytes.uint64Value * 8)
    }
}
