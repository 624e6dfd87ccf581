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

    @Option(help: "Where the daemon keeps its state.")
    var stateDir = "/var/lib/godwit"

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

    func run() async throws {
        do {
            let stateURL = URL(fileURLWithPath: stateDir).standardizedFileURL
            var options = DaemonOptions(stateDir: stateURL, socket: socket.map { URL(fileURLWithPath: $0) }, hostName: name)
            options.bridge = bridge
            options.subnet = subnet
            options.gateway = gateway
            options.prefixLength = prefixLength
            options.cgroupRoot = cgroupRoot
            options.criu = criu
            options.https = try https.map { try HTTPSAddress(parsing: $0) }
            options.busyboxExtraFiles = try busyboxExtra.map { spec in
                let parts = spec.split(separator: ":", maxSplits: 1).map(String.init)
                guard parts.count == 2, parts[0].hasPrefix("/"), !parts[1].isEmpty else {
                    throw GodwitError("invalid --busybox-extra '\(spec)'", hint: "use HOST_PATH:PATH_IN_IMAGE, e.g. /usr/local/bin/memtouch:usr/bin/memtouch")
                }
                return ImageExtraFile(source: parts[0], destination: parts[1].hasPrefix("/") ? String(parts[1].dropFirst()) : parts[1])
            }
            _ = try options.addressPlan()
            try await GodwitDaemon.run(options, driver: try makeDriver())
        } catch let error as GodwitError {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            throw ExitCode.failure
        }
    }

    func makeDriver() throws -> any ContainerDriver {
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
