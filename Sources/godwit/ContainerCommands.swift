import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

struct LaunchCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "launch", abstract: "Create and start a container from an image.")

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Image alias (`busybox` is built in).") var image: String
    @Argument(help: "Container name.") var name: String
    @Option(name: .customShort("c"), help: ArgumentHelp("Configuration key=value (repeatable).", valueName: "key=value"))
    var config: [String] = []

    func run() async throws {
        try await CLI.run {
            try ContainerName.validate(name)
            var values: [String: String] = [:]
            for assignment in config {
                let (key, value) = try ConfigKey.parseAssignment(assignment)
                values[key] = value
            }
            if ContainerConfig(values).privileged {
                FileHandle.standardError.write(Data("warning: \(name) is privileged (security.privileged=true): root in it is root on this host, with no user namespace between them\n".utf8))
            }
            let client = daemon.client
            let operation = try await client.launch(LaunchRequest(name: name, image: image, config: values))
            let done = try await CLI.follow(client, operation)
            let address = done.metadata["ipv4"].flatMap { $0.isEmpty ? nil : ", \($0)" } ?? ""
            CLI.note("Launched \(name) (pid \(done.metadata["pid"] ?? "?")\(address))")
        }
    }
}

struct ListCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List containers.", aliases: ["ls"])

    @OptionGroup var daemon: DaemonOptions
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            let containers = try await daemon.client.containers()
            if format == .json { return try CLI.printJSON(containers) }
            var table = TextTable(header: ["NAME", "STATE", "IPV4", "PID"])
            for c in containers {
                table.add([c.name, c.status.rawValue.uppercased() + (c.stateful ? " (stateful)" : ""),
                           c.ipv4 ?? "-", c.pid.map(String.init) ?? "-"])
            }
            print(table.render())
        }
    }
}

struct InfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "info", abstract: "Show a container, or the daemon without a name.")

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container name.") var name: String?
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            let client = daemon.client
            guard let name else {
                let info = try await client.serverInfo()
                if format == .json { return try CLI.printJSON(info) }
                var table = TextTable()
                table.add(["Host:", info.hostName])
                table.add(["Version:", info.version])
                table.add(["State dir:", info.stateDir])
                table.add(["Socket:", info.socket])
                table.add(["Daemon pid:", String(info.pid)])
                table.add(["Driver:", info.driver])
                table.add(["Network:", info.bridge.map { "\($0) \(info.subnet ?? "") gateway \(info.gateway ?? "none")" } ?? "none"])
                table.add(["Cgroup root:", info.cgroupRoot ?? "default"])
                table.add(["HTTPS:", info.httpsAddress ?? "none (start godwitd with --https ADDRESS:PORT)"])
                if let fingerprint = info.certificateFingerprint { table.add(["Certificate:", fingerprint]) }
                print(table.render())
                return
            }
            let c = try await client.container(name)
            if format == .json { return try CLI.printJSON(c) }
            var table = TextTable()
            table.add(["Name:", c.name])
            table.add(["Status:", c.status.rawValue + (c.stateful ? " (checkpoint kept for the next start)" : "")])
            table.add(["Image:", "\(c.image) (\(c.imageFingerprint.prefix(12)))"])
            table.add(["PID:", c.pid.map(String.init) ?? "-"])
            table.add(["IPv4:", c.ipv4 ?? "-"])
            table.add(["MAC:", c.mac])
            table.add(["Created:", CLI.format(c.createdAt)])
            table.add(["Last migration:", CLI.format(c.lastMigration)])
            // As /proc/PID/uid_map shows it (uids and gids alike).
            let config = ContainerConfig(c.config)
            table.add(["Id map:", config.privileged ? "none (privileged: root inside is root on the host)"
                : config.idmapBase.map { "0 \($0) 65536 (unprivileged)" } ?? "none (launched before user namespaces: privileged)"])
            print(table.render())
            if !c.config.isEmpty {
                print("Config:")
                for key in c.config.keys.sorted() { print("  \(key): \(c.config[key]!)") }
            }
            if let move = try? await client.lastMove(name) {
                print("Last move:")
                print(move.text.split(separator: "\n").map { "  " + $0 }.joined(separator: "\n"))
            }
        }
    }
}

/// start, stop, restart (and the freeze pair) share one shape: PUT state, follow.
protocol StateCommand: AsyncParsableCommand {
    var daemon: DaemonOptions { get }
    var names: [String] { get }
    func request() -> ContainerStatePut
}

extension StateCommand {
    func run() async throws {
        try await CLI.run {
            let client = daemon.client
            for name in names {
                try await CLI.follow(client, try await client.setState(name, request()))
            }
        }
    }
}

struct StartCommand: StateCommand {
    static let configuration = CommandConfiguration(commandName: "start", abstract: "Start containers (restoring a stateful stop).")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container names.") var names: [String]
    func request() -> ContainerStatePut { ContainerStatePut(action: .start) }
}

struct StopCommand: StateCommand {
    static let configuration = CommandConfiguration(commandName: "stop", abstract: "Stop containers.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container names.") var names: [String]
    @Flag(help: "Checkpoint the processes (CRIU) so the next start restores them.") var stateful = false
    @Flag(help: "Kill instead of a clean shutdown.") var force = false
    @Option(help: "Seconds to wait for a clean shutdown before killing.") var timeout: Int = -1
    func request() -> ContainerStatePut {
        ContainerStatePut(action: .stop, stateful: stateful, force: force, timeout: timeout)
    }
}

struct RestartCommand: StateCommand {
    static let configuration = CommandConfiguration(commandName: "restart", abstract: "Restart containers.")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container names.") var names: [String]
    @Flag(help: "Kill instead of a clean shutdown.") var force = false
    @Option(help: "Seconds to wait for a clean shutdown before killing.") var timeout: Int = -1
    func request() -> ContainerStatePut { ContainerStatePut(action: .restart, force: force, timeout: timeout) }
}

struct FreezeCommand: StateCommand {
    static let configuration = CommandConfiguration(commandName: "pause", abstract: "Freeze containers.", aliases: ["freeze"])
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container names.") var names: [String]
    func request() -> ContainerStatePut { ContainerStatePut(action: .freeze) }
}

struct UnfreezeCommand: StateCommand {
    static let configuration = CommandConfiguration(commandName: "resume", abstract: "Unfreeze containers.", aliases: ["unfreeze"])
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container names.") var names: [String]
    func request() -> ContainerStatePut { ContainerStatePut(action: .unfreeze) }
}

struct DeleteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "delete", abstract: "Delete containers.", aliases: ["rm"])
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container names.") var names: [String]
    @Flag(help: "Stop (kill) running containers first.") var force = false

    func run() async throws {
        try await CLI.run {
            let client = daemon.client
            for name in names { try await CLI.follow(client, try await client.delete(name, force: force)) }
        }
    }
}

struct ConsoleCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "console", abstract: "Attach to a container's console, or show its log.",
        discussion: """
            Attaches to /dev/console of the container (its init's stdin/stdout/stderr); detach with
            Ctrl-a q (Ctrl-a a sends Ctrl-a). One client at a time; a checkpoint or move detaches it.
            """)
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container name.") var name: String
    @Flag(help: "Print the init's output so far.") var showLog = false

    func run() async throws {
        try await CLI.run {
            guard showLog else {
                // Like file push/pull: the plan names the helper and the init; the keeper inside
                // the container does the rest, the daemon relays nothing.
                let plan = try await daemon.client.execPlan(name, ExecRequest(command: ["true"]))
                guard plan.argv.first.map({ $0.hasSuffix("godwit-spawn") }) == true else {
                    throw GodwitError("this daemon's driver has no consoles", hint: "use `godwit console --show-log \(name)`")
                }
                FileHandle.standardError.write(Data("Attached to \(name)'s console; detach with Ctrl-a q.\r\n".utf8))
                try ExecCommand.replaceProcess(with: ExecPlan(argv: [plan.argv[0], "console", "--pid", String(plan.pid)],
                                                              environment: ProcessInfo.processInfo.environment, pid: plan.pid))
            }
            print(try await daemon.client.console(name).log, terminator: "")
        }
    }
}
