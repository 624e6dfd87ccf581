import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

/// `godwit file push|pull`, as `lxc file`. Like exec, the daemon relays nothing: it answers
/// an exec plan (so it checks the container is running and names the helper and the init),
/// and the CLI runs `godwit-spawn file` itself, which resolves the container path with
/// openat2(RESOLVE_IN_ROOT) under /proc/INIT/root, so symlinks can't lead out of the
/// container.
struct FileCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "file", abstract: "Copy files into and out of a container.",
        subcommands: [FilePushCommand.self, FilePullCommand.self])
}

/// NAME/PATH: the container name, then its absolute path (NAME//etc/x and NAME/etc/x both
/// mean /etc/x).
struct ContainerPath {
    let name: String
    let path: String

    init(_ text: String) throws {
        guard let slash = text.firstIndex(of: "/"), slash != text.startIndex else {
            throw GodwitError("'\(text)' is not NAME/PATH", hint: "e.g. c1/etc/hostname")
        }
        name = String(text[..<slash])
        let rest = text[text.index(after: slash)...].drop(while: { $0 == "/" })
        guard !rest.isEmpty else { throw GodwitError("'\(text)' names no file in the container", hint: "e.g. \(name)/etc/hostname") }
        path = "/" + rest
        guard path.utf8.count < 4096 else { throw GodwitError("the path in the container is too long (\(path.utf8.count) bytes)") }
    }

    /// Runs `godwit-spawn file MODE --pid INIT ARGS...` with our stdio; its status is ours.
    func run(_ daemon: DaemonOptions, _ mode: String, _ arguments: [String]) async throws -> Int32 {
        let plan = try await daemon.client.execPlan(name, ExecRequest(command: ["true"]))
        guard plan.argv.first.map({ $0.hasSuffix("godwit-spawn") }) == true else {
            throw GodwitError("this daemon's driver can't transfer files", hint: "only the runtime driver has container file systems")
        }
        let helper = ExecPlan(argv: [plan.argv[0], "file", mode, "--pid", String(plan.pid)] + arguments,
                              environment: ProcessInfo.processInfo.environment, pid: plan.pid)
        return try ExecCommand.runInherited(helper)
    }
}

struct FilePushCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "push", abstract: "Copy a local file into a container.",
        discussion: "Example: godwit file push ./motd c1/etc/motd --mode 0644 --uid 0 --gid 0")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Local file.") var local: String
    @Argument(help: "NAME/PATH in the container.") var target: String
    @Option(help: "Permission bits, octal (default 0644 for a new file; an existing file keeps its own).") var mode: String?
    @Option(help: "Owner uid.") var uid: UInt32?
    @Option(help: "Owner gid.") var gid: UInt32?

    func run() async throws {
        var status: Int32 = 0
        try await CLI.run {
            let destination = try ContainerPath(target)
            var options: [String] = []
            if let mode {
                guard let bits = UInt16(mode, radix: 8), bits <= 0o7777 else {
                    throw GodwitError("invalid --mode '\(mode)'", hint: "octal permission bits, e.g. 0644")
                }
                options += ["--mode", String(bits, radix: 8)]
            }
            if let uid { options += ["--uid", String(uid)] }
            if let gid { options += ["--gid", String(gid)] }
            status = try await destination.run(daemon, "push", options + [local, destination.path])
        }
        if status != 0 { throw ExitCode(status) }
    }
}

struct FilePullCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "pull", abstract: "Copy a file out of a container (LOCAL - writes to stdout).",
        discussion: "Example: godwit file pull c1/etc/hostname ./hostname")
    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "NAME/PATH in the container.") var source: String
    @Argument(help: "Local file, or - for stdout.") var local: String

    func run() async throws {
        var status: Int32 = 0
        try await CLI.run {
            let origin = try ContainerPath(source)
            status = try await origin.run(daemon, "pull", [origin.path, local])
        }
        if status != 0 { throw ExitCode(status) }
    }
}
