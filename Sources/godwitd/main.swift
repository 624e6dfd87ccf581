import API
import ArgumentParser
import Daemon
import Foundation
import GodwitCore

struct Godwitd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "godwitd",
        abstract: "The Godwit daemon: one per host, serves the REST API on a unix socket.",
        discussion: """
            Keeps containers, images and operations in STATE_DIR/godwit.db. Stopping the daemon \
            (SIGTERM) leaves containers running; the next godwitd on the same state directory adopts them.
            """)

    @Option(help: ArgumentHelp("The configuration `godwit init` wrote (default: \(HostConfiguration.defaultPath) if it exists); flags override it.",
                               valueName: "file"))
    var config: String?

    @Option(help: "Where the daemon keeps its state (default: /var/lib/godwit).")
    var stateDir: String?

    @Option(help: "The API socket (default: STATE_DIR/unix.socket).")
    var socket: String?

    @Option(help: "Bridge the containers' veths join (needs --subnet).")
    var bridge: String?

    @Option(help: "Subnet containers get addresses from, e.g. 10.77.1.0/24.")
    var subnet: String?

    @Option(help: "The containers' default gateway (optional), e.g. 10.77.0.1.")
    var gateway: String?

    @Option(help: "Prefix length on the containers' eth0 (default: --subnet's); e.g. 16 when hosts share a /16.")
    var prefixLength: Int?

    @Option(help: "Parent cgroup for the containers' cgroups.")
    var cgroupRoot: String?

    @Option(help: "CRIU binary to use for checkpoints and migration.")
    var criu: String?

    @Option(help: "Host name shown in `godwit info` and used by migrations.")
    var name: String?

    @Option(help: ArgumentHelp("Extra file for the built-in busybox image, HOST_PATH:PATH_IN_IMAGE (repeatable).",
                               valueName: "file"))
    var busyboxExtra: [String] = []

    @Option(help: ArgumentHelp("Also serve other daemons over HTTPS with mutual TLS on ADDRESS:PORT, e.g. 10.77.0.11:8443 (needed for trust, remotes and migration).",
                               valueName: "address:port"))
    var https: String?

    // Tests only: also needs GODWIT_TESTING_FAKE_DRIVER=1, so it can't be chosen by accident.
    @Option(help: .hidden)
    var testingFakeDriver: String?

    /// The file's settings under the flags' (a flag given wins).
    func hostConfiguration() throws -> HostConfiguration {
        if let config { return try HostConfiguration.read(config) }
        guard FileManager.default.fileExists(atPath: HostConfiguration.defaultPath) else { return HostConfiguration() }
        return try HostConfiguration.read(HostConfiguration.defaultPath)
    }

    func run() async throws {
        do {
            let file = try hostConfiguration()
            let stateDir = self.stateDir ?? file.stateDir ?? "/var/lib/godwit"
            let stateURL = URL(fileURLWithPath: stateDir).standardizedFileURL
            var options = DaemonOptions(stateDir: stateURL, socket: socket.map { URL(fileURLWithPath: $0) }, hostName: name ?? file.name)
            // --bridge names a bridge set up by someone else; without it, the managed one.
            if bridge == nil, let network = file.network {
                options.managedNetwork = network
                options.bridge = network.name
                options.subnet = network.leaseSubnet?.description
                options.gateway = network.containerGateway?.description
                options.prefixLength = network.containerPrefixLength
            }
            if let bridge { options.bridge = bridge }
            if let subnet { options.subnet = subnet }
            if let gateway { options.gateway = gateway }
            if let prefixLength { options.prefixLength = prefixLength }
            options.cgroupRoot = cgroupRoot
            options.criu = criu ?? file.criu
            options.https = try (https ?? file.https).map { try HTTPSAddress(parsing: $0) }
            options.busyboxExtraFiles = try busyboxExtra.map { spec in
                let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
                guard parts.count == 2, parts[0].hasPrefix("/"), !parts[1].isEmpty else {
                    throw GodwitError("invalid --busybox-extra '\(spec)'", hint: "use HOST_PATH:PATH_IN_IMAGE, e.g. /usr/local/bin/memtouch:usr/bin/memtouch")
                }
                return ImageExtraFile(source: parts[0], destination: parts[1].hasPrefix("/") ? String(parts[1].dropFirst()) : parts[1])
            }
            _ = try options.addressPlan()
            try await GodwitDaemon.run(options, driver: try makeDriver(stateDir: stateDir, criu: options.criu))
        } catch let error as GodwitError {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    func makeDriver(stateDir: String, criu: String?) throws -> any ContainerDriver {
        if let fakeState = testingFakeDriver {
            guard ProcessInfo.processInfo.environment["GODWIT_TESTING_FAKE_DRIVER"] == "1" else {
                throw GodwitError("--testing-fake-driver is for Godwit's own tests",
                                  hint: "it simulates containers without running anything; don't use it")
            }
            return FakeDriver(persistence: URL(fileURLWithPath: fakeState))
        }
        return try RuntimeDriver(stateDirectory: URL(fileURLWithPath: stateDir).standardizedFileURL,
                                 cgroupParent: cgroupRoot, criu: criu)
    }
}

// What AsyncParsableCommand.main() does, inside an async function: in top-level code the
// compiler picks ParsableCommand's synchronous overloads of main() and run().
func runCommand() async {
    DaemonLogging.bootstrap()
    do {
        var command = try Godwitd.parseAsRoot()
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    } catch {
        Godwitd.exit(withError: error)
    }
}

await runCommand()
