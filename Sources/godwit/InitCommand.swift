import API
import ArgumentParser
import Client
import Foundation
import GodwitCore
import Runtime

/// `godwit init`: what `lxd init` does for LXD. It decides the state directory, the HTTPS
/// address, the containers' network and CRIU, sets the network up now (so a mistake shows
/// here, not at the daemon's next start), writes the file godwitd reads, and trusts the
/// remotes it was given once the daemon runs.
struct InitCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "init", abstract: "Set up this host: state, HTTPS address, a managed network, CRIU, trust.",
        discussion: """
            Interactive on a terminal; `--auto` takes the flags (and defaults), `--preseed FILE` \
            (or - for stdin) an LXD-style YAML file (see docs/two-hosts.md). The result goes to \
            --config, which godwitd reads at start.
            """)

    @Flag(help: "No questions: use the flags and defaults.") var auto = false
    @Option(help: ArgumentHelp("Read everything from this YAML file (- for stdin).", valueName: "file")) var preseed: String?
    @Flag(help: "Print the configuration instead of applying it.") var dump = false
    @Option(help: ArgumentHelp("Where to write the configuration.", valueName: "file")) var config = HostConfiguration.defaultPath
    @Option(help: "Where godwitd keeps its state.") var stateDir: String?
    @Option(help: "This host's name (default: the hostname).") var name: String?
    @Option(help: ArgumentHelp("Serve other hosts on ADDRESS:PORT (mutual TLS), e.g. 10.0.0.11:8443.", valueName: "address:port"))
    var https: String?
    @Option(help: "CRIU binary to use (default: the installed or provisioned one).") var criu: String?
    @Option(help: "Name of the managed bridge.") var network = "gwbr0"
    @Option(help: ArgumentHelp("A NAT'd private bridge with this host address, e.g. 10.99.1.1/24.", valueName: "cidr"))
    var nat: String?
    @Option(help: ArgumentHelp("A bridge onto this interface: containers sit on the host's LAN.", valueName: "interface"))
    var uplink: String?
    @Option(help: ArgumentHelp("Bridged: an address for the bridge (default: the uplink's, moved over).", valueName: "cidr"))
    var address: String?
    @Option(help: ArgumentHelp("Where container addresses come from (bridged: this host's share of the LAN).", valueName: "cidr"))
    var containers: String?
    @Option(help: ArgumentHelp("The containers' default route (default: this host for NAT).", valueName: "ipv4"))
    var gateway: String?
    @Flag(help: "No managed network (containers get none unless godwitd gets --bridge).") var noNetwork = false
    @Flag(help: "Write the file without setting the network up now.") var noApply = false

    func run() async throws {
        try await CLI.run {
            var configuration: HostConfiguration
            if let preseed {
                let text: String
                if preseed == "-" {
                    text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
                } else {
                    guard let data = FileManager.default.contents(atPath: preseed) else { throw GodwitError("cannot read \(preseed)") }
                    text = String(decoding: data, as: UTF8.self)
                }
                do { configuration = try HostConfiguration.parse(text) } catch let error as GodwitError {
                    throw GodwitError("\(preseed == "-" ? "the preseed" : preseed): \(error.message)", hint: error.hint)
                }
            } else if auto || isatty(0) == 0 {
                if !auto { throw GodwitError("no terminal to ask on", hint: "use --auto with flags, or --preseed FILE") }
                configuration = try fromFlags()
            } else {
                configuration = try interactive()
            }
            try configuration.validate()
            if dump {
                print(configuration.yaml(), terminator: "")
                return
            }
            if let network = configuration.network, !noApply {
                try ManagedBridge.ensure(network)
                configuration.network = try ManagedBridge.settled(network)
                CLI.note("network \(network.name) (\(network.mode.rawValue)) is up")
            }
            // Tokens are used once, below: they don't belong in the file.
            var written = configuration
            written.remotes = []
            // Root only: it names the state directory and the CRIU godwitd runs.
            try AtomicFile.write(Data(written.yaml().utf8), to: URL(fileURLWithPath: config))
            CLI.note("wrote \(config); start godwitd (or restart it) to use it")
            try await addRemotes(configuration)
        }
    }

    func fromFlags() throws -> HostConfiguration {
        var c = HostConfiguration(stateDir: stateDir, name: name, https: https, criu: criu)
        if !noNetwork { c.network = try networkFromFlags() }
        return c
    }

    func networkFromFlags() throws -> ManagedNetwork? {
        if nat != nil && uplink != nil { throw GodwitError("--nat and --uplink exclude each other") }
        if let uplink {
            return try ManagedNetwork(name: network, mode: .bridged, address: try address.map(InterfaceAddress.init),
                                      containers: try containers.map(Subnet.init), gateway: try gateway.map(Self.ipv4),
                                      uplink: uplink)
        }
        // NAT by default, as LXD's lxdbr0.
        return try ManagedNetwork(name: network, mode: .nat, address: try InterfaceAddress(nat ?? "10.99.1.1/24"),
                                  containers: try containers.map(Subnet.init), gateway: try gateway.map(Self.ipv4))
    }

    static func ipv4(_ s: String) throws -> IPv4 {
        guard let a = IPv4(s) else { throw GodwitError("invalid IPv4 address '\(s)'") }
        return a
    }

    func interactive() throws -> HostConfiguration {
        func ask(_ question: String, _ fallback: String) -> String {
            FileHandle.standardOutput.write(Data("\(question) [default=\(fallback)]: ".utf8))
            let answer = (readLine() ?? "").trimmingCharacters(in: .whitespaces)
            return answer.isEmpty ? fallback : answer
        }
        var c = HostConfiguration()
        c.stateDir = ask("Where should godwitd keep its state?", stateDir ?? "/var/lib/godwit")
        c.name = ask("What is this host's name?", name ?? ProcessInfo.processInfo.hostName)
        let serve = ask("Serve other hosts over HTTPS (needed to move containers)? (yes/no)", "yes")
        if serve.lowercased().hasPrefix("y") { c.https = ask("Address and port to listen on?", https ?? "0.0.0.0:8443") }
        switch ask("Containers' network: nat (a private bridge), bridged (onto the LAN), or none?", uplink != nil ? "bridged" : "nat") {
        case "none": break
        case "bridged":
            let name = ask("Bridge name?", network)
            let uplink = ask("Which interface goes into the bridge?", self.uplink ?? "eth0")
            let containers = ask("Which part of the LAN may this host give to containers (CIDR)?", self.containers ?? "")
            c.network = try ManagedNetwork(name: name, mode: .bridged, address: nil, containers: try Subnet(containers), uplink: uplink)
        default:
            let name = ask("Bridge name?", network)
            let address = ask("Host address on it (CIDR)?", nat ?? "10.99.1.1/24")
            c.network = try ManagedNetwork(name: name, mode: .nat, address: try InterfaceAddress(address))
        }
        return c
    }

    /// Joins the remotes the preseed names, through the daemon this configuration is for.
    func addRemotes(_ configuration: HostConfiguration) async throws {
        guard !configuration.remotes.isEmpty else { return }
        let client = GodwitClient(stateDir: configuration.stateDir ?? stateDir ?? GodwitClient.defaultStateDir())
        guard (try? await client.serverInfo()) != nil else {
            let commands = configuration.remotes.map { "godwit remote add \($0.name) https://\($0.address) --token \($0.token)" }
            throw GodwitError("godwitd is not running, so the remotes were not added",
                              hint: "start godwitd, then run:\n  " + commands.joined(separator: "\n  "))
        }
        for remote in configuration.remotes {
            _ = try await client.addRemote(RemoteAddRequest(name: remote.name, url: "https://\(remote.address)", token: remote.token))
            CLI.note("trusting \(remote.name) at \(remote.address)")
        }
    }
}

/// `godwit network list|show`.
struct NetworkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "network", abstract: "Show the containers' network (`godwit init` sets it up).",
        subcommands: [List.self, Show.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List networks.", aliases: ["ls"])
        @OptionGroup var daemon: DaemonOptions
        @Option(help: "human or json") var format: OutputFormat = .human

        func run() async throws {
            try await CLI.run {
                let networks = try await daemon.client.networks()
                if format == .json { return try CLI.printJSON(networks) }
                var table = TextTable(header: ["NAME", "MODE", "ADDRESS", "CONTAINERS", "UPLINK", "STATE", "LEASES"])
                for n in networks {
                    table.add([n.name, n.mode, n.address ?? "-", n.containers ?? "-", n.uplink ?? "-", n.state, String(n.leases)])
                }
                print(table.render())
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one network.")
        @OptionGroup var daemon: DaemonOptions
        @Argument var name: String
        @Option(help: "human or json") var format: OutputFormat = .human

        func run() async throws {
            try await CLI.run {
                let n = try await daemon.client.network(name)
                if format == .json { return try CLI.printJSON(n) }
                let rows: [(String, String?)] = [("name", n.name), ("mode", n.mode), ("state", n.state), ("address", n.address),
                                                 ("containers", n.containers), ("gateway", n.gateway), ("uplink", n.uplink),
                                                 ("mac", n.mac), ("leases", String(n.leases))]
                for (k, v) in rows { print("\(k): \(v ?? "-")") }
            }
        }
    }
}
