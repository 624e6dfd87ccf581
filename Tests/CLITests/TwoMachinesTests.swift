import API
import Foundation
import GodwitCore
import Testing

/// Machines built by hand, not by `godwit lab`: network namespaces on a veth "LAN" (a
/// bridge in its own namespace), each set up the way docs/two-hosts.md tells a user, with
/// `godwit init --preseed`, trust tokens and `godwit remote add`. Named like a lab's pieces
/// only so that `godwit lab down` can find and remove them after the test, even after a
/// failure.
final class TwoMachines: @unchecked Sendable {
    let name = LabCLITests.uniqueName()
    let stateRoot = "/tmp/gw-2m-" + UUID().uuidString.prefix(8).lowercased()
    static let lanPrefix = "192.168.77."
    private var tornDown = false

    var labDirectory: String { stateRoot + "/" + name }
    func netns(_ role: String) -> String { "godwit-\(name)-\(role)" }
    func netnsPath(_ role: String) -> String { "/run/netns/" + netns(role) }
    func stateDirectory(_ host: String) -> String { labDirectory + "/" + host }
    func address(_ host: String) -> String { Self.lanPrefix + (host == "client" ? "100" : "1" + host.dropFirst()) }

    init(machines: [String]) throws {
        guard geteuid() == 0 else { throw GodwitError("needs root") }
        try FileManager.default.createDirectory(atPath: labDirectory, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: labDirectory + "/.godwit-lab", contents: Data())
        do {
            // The LAN: a bridge in the "fabric" namespace, one veth to each machine's eth0.
            try run(["ip", "netns", "add", netns("fabric")])
            try ip("fabric", ["link set lo up", "link add lan type bridge", "link set lan up"])
            for (i, role) in (machines + ["client"]).enumerated() {
                try run(["ip", "netns", "add", netns(role)])
                try ip("fabric", ["link add port\(i) type veth peer name eth0 netns \(netns(role))",
                                  "link set port\(i) master lan", "link set port\(i) up"])
                try ip(role, ["link set lo up", "addr add \(address(role))/24 dev eth0", "link set eth0 up"])
            }
        } catch {
            tearDown()
            throw error
        }
    }

    deinit { tearDown() }

    func tearDown() {
        guard !tornDown else { return }
        tornDown = true
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_LAB_ROOT"] = stateRoot
        _ = try? Command.run([LabCLITests.godwit, "lab", "down", "--name", name], environment: environment)
        try? FileManager.default.removeItem(atPath: stateRoot)
    }

    @discardableResult
    func run(_ argv: [String], input: String? = nil) throws -> CommandResult {
        let result = try Command.run(argv, input: input)
        guard result.succeeded else { throw GodwitError("`\(argv.joined(separator: " "))` failed: \(result.stderr)") }
        return result
    }

    func ip(_ role: String, _ lines: [String]) throws {
        try run(["ip", "-n", netns(role), "-batch", "-"], input: lines.joined(separator: "\n") + "\n")
    }

    /// `godwit init --preseed -` inside the machine.
    func initialize(_ host: String, network: String) throws -> CommandResult {
        let preseed = """
            config:
              core.https_address: \(address(host)):8443
              core.name: \(host)
              core.state_dir: \(stateDirectory(host))
            networks:
            - name: gwbr0
              config:
            \(network.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))

            """
        return try Command.run(["nsenter", "--net=" + netnsPath(host), LabCLITests.godwit, "init", "--preseed", "-",
                                "--config", labDirectory + "/\(host).yaml"], input: preseed)
    }

    /// godwitd from the file init wrote, in the machine's namespace; the cgroup parent is
    /// named so `lab down` finds it.
    func startDaemon(_ host: String) throws {
        let godwitd = (LabCLITests.godwit as NSString).deletingLastPathComponent + "/godwitd"
        try DetachedProcess.spawn(["nsenter", "--net=" + netnsPath(host), godwitd, "--config", labDirectory + "/\(host).yaml",
                                   "--cgroup-root", netns(host)], log: stateRoot + "/\(host)-godwitd.log")
        guard poll(timeout: 30, { (try? self.godwit(host, ["list"]).succeeded) == true }) else {
            throw GodwitError("godwitd on \(host) did not come up: \(HostEnvironment.read(stateRoot + "/\(host)-godwitd.log") ?? "")")
        }
    }

    /// `godwit ARGS --dir STATE` (before a `--`, which ends godwit's own options).
    func godwit(_ host: String, _ arguments: [String]) throws -> CommandResult {
        var argv = arguments
        argv.insert(contentsOf: ["--dir", stateDirectory(host)], at: argv.firstIndex(of: "--") ?? argv.endIndex)
        return try Command.run([LabCLITests.godwit] + argv)
    }

    /// `trust add` on `host` for `peer`, `remote add` of `host` on `peer`.
    func trust(_ peer: String, on host: String) throws {
        let token = try godwit(host, ["trust", "add", peer])
        try #require(token.succeeded, "trust add: \(token.stderr)")
        let value = token.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        let add = try godwit(peer, ["remote", "add", host, "https://\(address(host)):8443", "--token", value])
        try #require(add.succeeded, "remote add: \(add.stderr)")
    }

    func ping(from role: String, _ target: String) throws -> Bool {
        try Command.run(["nsenter", "--net=" + netnsPath(role), "busybox", "ping", "-c", "1", "-W", "2", target]).succeeded
    }
}

@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct TwoMachinesTests {
    /// docs/two-hosts.md, end to end: two machines on one LAN, each `godwit init` with a
    /// bridge onto its uplink, trust by token, a container that keeps its address and its
    /// TCP connection while it moves there and back in every mode; a third machine with a
    /// NAT'd bridge whose container reaches the LAN through its host.
    @Test func initTrustLaunchAndMoveBetweenTwoMachinesInEveryMode() throws {
        let machines = try TwoMachines(machines: ["h1", "h2", "h3"])
        defer { machines.tearDown() }
        for (host, range) in [("h1", "192.168.77.64/27"), ("h2", "192.168.77.96/27")] {
            let result = try machines.initialize(host, network: "bridge.external_interfaces: eth0\nipv4.containers: \(range)")
            try #require(result.succeeded, "init on \(host): \(result.stderr)")
            let config = try #require(HostEnvironment.read(machines.labDirectory + "/\(host).yaml"))
            #expect(config.contains("ipv4.address: \(machines.address(host))/24"), "the uplink's address moved to the bridge: \(config)")
            try machines.startDaemon(host)
        }
        // The machine stays on the LAN through its bridge.
        #expect(try machines.ping(from: "client", machines.address("h1")))
        let networks = try machines.godwit("h1", ["network", "list", "--format", "json"])
        let list = try APICoding.decoder().decode([NetworkInfo].self, from: Data(networks.stdout.utf8))
        #expect(list.map(\.name) == ["gwbr0"] && list.first?.mode == "bridged" && list.first?.state == "up"
                && list.first?.uplink == "eth0", "\(networks.stdout)")
        try machines.trust("h1", on: "h2")
        try machines.trust("h2", on: "h1")
        // What the network provides, asked before any move.
        let check = try machines.godwit("h1", ["check", "--peer", "h2", "--format", "json"])
        try #require(check.succeeded, "check --peer: \(check.stderr)")
        let link = try APICoding.decoder().decode(PeerLinkReport.self, from: Data(check.stdout.utf8))
        #expect(link.addressesPortable && link.reason.contains("192.168.77.0/24"), "\(link.reason)")
        #expect(link.throughputMbitPerSecond > 0 && link.roundTripMillis > 0 && link.warnings.isEmpty, "\(link)")

        let launch = try machines.godwit("h1", ["launch", "busybox", "web"])
        try #require(launch.succeeded, "launch: \(launch.stderr)")
        let containers = try APICoding.decoder().decode([ContainerInfo].self,
                                                        from: Data(try machines.godwit("h1", ["list", "--format", "json"]).stdout.utf8))
        let ip = try #require(containers.first?.ipv4)
        #expect(ip.hasPrefix("192.168.77.") && (65...94).contains(Int(ip.split(separator: ".").last ?? "") ?? 0), "lease \(ip)")
        #expect(try machines.ping(from: "client", ip), "the container is not reachable on the LAN")
        _ = try machines.godwit("h1", ["exec", "web", "--", "sh", "-c", "(sleep 100000 | nc -l -p 5000 > /tmp/received) </dev/null >/dev/null 2>&1 &"])
        let client = try NetcatClient(netnsPath: machines.netnsPath("client"), ip: ip, port: 5000)
        defer { client.stop() }
        var sent = ""
        var host = "h1"
        for mode in ["stop-and-copy", "pre-copy", "post-copy", "hybrid"] {
            for target in [host == "h1" ? "h2" : "h1", host] {
                let move = try machines.godwit(host, ["move", "web", "\(target):", "--mode", mode])
                #expect(move.succeeded, "\(mode) \(host) -> \(target): \(move.stderr)")
                guard move.succeeded else { return }
                host = target
                let moved = try APICoding.decoder().decode([ContainerInfo].self,
                                                           from: Data(try machines.godwit(host, ["list", "--format", "json"]).stdout.utf8))
                #expect(moved.first?.ipv4 == ip && moved.first?.status == .running, "\(mode): on \(host): \(moved)")
                #expect(try machines.ping(from: "client", ip), "\(mode): unreachable on \(host)")
                let line = "\(mode)-\(host)"
                sent += line + "\n"
                try client.send(line)
                #expect(waitUntil { (try? machines.godwit(host, ["exec", "web", "--", "cat", "/tmp/received"]).stdout) == sent },
                        "\(mode): the TCP connection did not carry on to \(host)")
            }
        }
        #expect(client.isConnected)

        // A NAT'd bridge: the container reaches the LAN through its host.
        let nat = try machines.initialize("h3", network: "ipv4.address: 10.99.9.1/24\nipv4.nat: true")
        try #require(nat.succeeded, "init on h3: \(nat.stderr)")
        try machines.startDaemon("h3")
        let natLaunch = try machines.godwit("h3", ["launch", "busybox", "inside"])
        try #require(natLaunch.succeeded, "launch: \(natLaunch.stderr)")
        let out = try machines.godwit("h3", ["exec", "inside", "--", "ping", "-c", "1", "-W", "2", machines.address("client")])
        #expect(out.succeeded, "the NAT'd container can't reach the LAN: \(out.stdout) \(out.stderr)")
        let natInfo = try machines.godwit("h3", ["network", "show", "gwbr0"])
        #expect(natInfo.stdout.contains("mode: nat") && natInfo.stdout.contains("leases: 1"), "\(natInfo.stdout)")
    }
}
