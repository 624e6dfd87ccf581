import ArgumentParser
import Foundation
import GodwitCore
import Lab

struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lab", abstract: "Simulated hosts on this machine.",
        discussion: """
            A lab is a set of network namespaces on one fabric bridge: hosts h1..hN (each with a \
            container bridge br0, a state directory and a cgroup) and a client. Nothing is \
            created in the root network namespace; everything carries the lab's name.
            """,
        subcommands: [LabUp.self, LabStatusCommand.self, LabShape.self, LabDown.self, LabLinkTest.self,
                      LabTCPSink.self, LabTCPSource.self])
}

/// `--name`, shared by every lab subcommand.
struct LabNameOption: ParsableArguments {
    @Option(name: .long, help: "Lab name: a lowercase letter, then up to 7 lowercase letters or digits (default: lab).",
            transform: { try LabName($0) })
    var name: LabName = try! LabName(LabName.defaultName)
}

extension LabCommand {
    /// Parsed here rather than through an OutputFormat conformance, so this file doesn't
    /// clash with another command declaring one.
    static func parseFormat(_ text: String) throws -> OutputFormat {
        guard let format = OutputFormat(rawValue: text) else {
            throw GodwitError("unknown format '\(text)'", hint: "use human or json")
        }
        return format
    }

    /// This very binary, so probes run the same code (works from .build/debug and installed).
    static var executable: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    }
}

struct LabUp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "up", abstract: "Create a lab.")

    @OptionGroup var lab: LabNameOption
    @Option(help: "Number of hosts (1...\(Lab.maxHosts)).") var hosts: Int = 2
    @Option(help: "Shape every host's link, e.g. 1gbit, 500mbit, 125mbps (bps = bytes/s, as in tc).",
            transform: { try Bandwidth(parsing: $0) })
    var bandwidth: Bandwidth?
    @Option(help: "human or json (default: human).", transform: { try LabCommand.parseFormat($0) }) var format: OutputFormat = .human
    @Flag(help: "Don't start a godwitd in each host (network and cgroups only).") var noDaemons = false
    @Flag(help: "Don't make the hosts trust each other (each daemon still listens on ADDRESS:\(LabDaemons.httpsPort)).")
    var noTrust = false

    func run() async throws {
        let created = try Lab.create(name: lab.name, hosts: hosts, bandwidth: bandwidth)
        if !noDaemons {
            do {
                // The workload programs built beside godwit go into every host's busybox image.
                let extras = ["memtouch", "confine-probe"].map { (host: GodwitPaths.sibling($0), image: "usr/bin/" + $0) }
                    .filter { access($0.host, X_OK) == 0 }
                try LabDaemons.start(created, godwitd: GodwitPaths.sibling("godwitd"), extraFiles: extras,
                                     httpsPort: LabDaemons.httpsPort)
                if !noTrust { try await LabTrust.enrollAll(created) }
            } catch {
                _ = try? Lab.destroy(name: created.name)
                throw error
            }
        }
        if format == .json {
            print(try JSONOutput.encode(created))
            return
        }
        print("lab \(created.name) is up: \(created.hosts.count) host(s) on \(created.network), state in \(created.stateDirectory)")
        var table = TextTable(header: ["host", "netns", "address", "containers", "rate"])
        for host in created.hosts {
            table.add([host.name, host.netns, host.address, host.containerSubnet, bandwidth?.description ?? "unlimited"])
        }
        table.add([created.client.name, created.client.netns, created.client.address, "-", "unlimited"])
        print(table.render())
        print("run in a host: nsenter --net=\(created.hosts[0].netnsPath) <command>")
        if !noDaemons { print("talk to a host's daemon: godwit --dir \(created.name)/h1 list   (or GODWIT_DIR=\(created.name)/h1)") }
        if !noDaemons && !noTrust && created.hosts.count > 1 {
            print("every host trusts the others and has them as remotes (godwit --dir \(created.name)/h1 remote list)")
        }
    }
}

struct LabStatusCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status", abstract: "Show a lab (or every lab when --name is not given).")

    @Option(help: "Lab name; without it, every lab on this machine.", transform: { try LabName($0) })
    var name: LabName?
    @Option(help: "human or json (default: human).", transform: { try LabCommand.parseFormat($0) }) var format: OutputFormat = .human

    func run() async throws {
        try HostEnvironment.requireRoot(for: "godwit lab status")
        if let name {
            guard !LabLeftovers.find(name).isEmpty else {
                throw GodwitError("no lab named '\(name)'",
                                  hint: "create it with `godwit lab up --name \(name)`; `godwit lab status` lists labs")
            }
            let status = LabStatus.collect(name)
            if format == .json { return print(try JSONOutput.encode(status)) }
            print(status.humanDescription)
            // Asks each daemon, so only for one lab and only for people.
            if status.running { print((await LabTrust.summary(status)).joined(separator: "\n")) }
            return
        }
        let all = LabInventory.names().map { LabStatus.collect($0) }
        if format == .json {
            print(try JSONOutput.encode(all))
        } else if all.isEmpty {
            print("no labs (create one with `godwit lab up`)")
        } else {
            print(all.map(\.humanDescription).joined(separator: "\n\n"))
        }
    }
}

struct LabShape: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "shape", abstract: "Set the rate of a host's link (both directions).",
        discussion: "tbf on the host's uplink and on its port in the fabric. netem is not available, so no latency or loss.")

    @OptionGroup var lab: LabNameOption
    @Argument(help: "h1..hN or client.") var host: String
    @Argument(help: "e.g. 1gbit, 500mbit, 125mbps (bps = bytes/s), or unlimited.", transform: { try LinkRate(parsing: $0) })
    var rate: LinkRate

    func run() throws {
        try HostEnvironment.requireRoot(for: "godwit lab shape")
        let loaded = try Lab.load(name: lab.name)
        try loaded.shape(host, to: rate)
        print("\(lab.name)/\(try loaded.endpoint(named: host).name): \(rate) in both directions")
    }
}

struct LabDown: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "down", abstract: "Remove a lab, including leftovers of a crashed one.")

    @OptionGroup var lab: LabNameOption

    func run() throws {
        let report = try Lab.destroy(name: lab.name)
        guard report.removedAnything else {
            print("lab \(lab.name) does not exist; nothing to remove")
            return
        }
        let removed = report.removed
        print("removed lab \(lab.name): \(removed.namespaces.count) network namespace(s), \(removed.cgroups.count) cgroup(s)"
              + (removed.stateDirectory.map { ", \($0)" } ?? ""))
    }
}

struct LabLinkTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link-test", abstract: "Measure TCP throughput from one lab host to another.")

    @OptionGroup var lab: LabNameOption
    @Argument(help: "Sending endpoint: h1..hN or client.") var from: String
    @Argument(help: "Receiving endpoint: h1..hN or client.") var to: String
    @Option(help: "How long to send.") var seconds: Double = 3
    @Option(help: "human or json (default: human).", transform: { try LabCommand.parseFormat($0) }) var format: OutputFormat = .human

    func run() throws {
        try HostEnvironment.requireRoot(for: "godwit lab link-test")
        let result = try LinkTest.run(lab: try Lab.load(name: lab.name), from: from, to: to, seconds: seconds,
                                      executable: LabCommand.executable)
        print(format == .json ? try JSONOutput.encode(result) : result.humanDescription)
    }
}

/// Receiving end of a link test; run inside the destination's namespace by `link-test`.
struct LabTCPSink: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_tcp-sink", shouldDisplay: false)

    @Option var port: UInt16
    @Option var seconds: Double
    @Option var acceptTimeout: Double = 10
    @Flag(help: "Stop when stdin closes (the parent link test exited).") var lifeline = false

    func run() throws {
        let sample = try TCPProbe.sink(port: port, seconds: seconds, acceptTimeout: acceptTimeout,
                                       lifeline: lifeline ? STDIN_FILENO : nil)
        print(String(decoding: try JSONEncoder().encode(sample), as: UTF8.self))
    }
}

/// Sending end of a link test; run inside the origin's namespace by `link-test`.
struct LabTCPSource: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_tcp-source", shouldDisplay: false)

    @Option var address: String
    @Option var port: UInt16
    @Option(help: "Upper bound; the sink normally ends the transfer first.") var seconds: Double
    @Option var connectTimeout: Double = 10
    @Flag(help: "Stop when stdin closes (the parent link test exited).") var lifeline = false

    func run() throws {
        try TCPProbe.source(ip: address, port: port, maxSeconds: seconds, connectTimeout: connectTimeout,
                            lifeline: lifeline ? STDIN_FILENO : nil)
    }
}
