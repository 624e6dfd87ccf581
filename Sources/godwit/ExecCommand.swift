import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

/// Exec design: the daemon doesn't proxy stdio. It checks the container is running and
/// answers with an ExecPlan (the runtime's `godwit-spawn exec` pointed at the container's
/// init, which enters its namespaces and cgroup); this CLI runs that plan with its own
/// stdin/stdout/stderr inherited and exits with the command's exit code. Passing terminals
/// and exit codes through this way needs no fd passing over the socket and no stream
/// multiplexing, and the daemon stays the authority on which process is the container.
struct ExecCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "exec", abstract: "Run a command inside a container.",
        discussion: """
            Example: godwit exec c1 -- sh -c 'cat /proc/1/cmdline'. Exits with the command's exit code.
            With -t the command runs on a pseudo-terminal of the container's own (godwit exec -t c1 -- sh).
            """)

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container name.") var name: String
    @Option(name: .customLong("env"), help: ArgumentHelp("Environment variable KEY=VALUE (repeatable).", valueName: "KEY=VALUE"))
    var environment: [String] = []
    @Flag(name: [.customShort("t"), .customLong("tty")], help: "Run the command on a pseudo-terminal (interactive shells, editors).")
    var tty = false
    @Argument(parsing: .postTerminator, help: "The command and its arguments, after --.") var command: [String] = []

    func run() async throws {
        var status: Int32 = 0
        try await CLI.run {
            guard !command.isEmpty else {
                throw GodwitError("no command given", hint: "e.g. `godwit exec \(name) -- sh`")
            }
            var env: [String: String] = [:]
            for pair in environment {
                guard let eq = pair.firstIndex(of: "="), eq != pair.startIndex else {
                    throw GodwitError("invalid --env '\(pair)'", hint: "use KEY=VALUE")
                }
                env[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
            }
            // Like ssh and docker: full-screen programs need to know the terminal's type.
            if tty, env["TERM"] == nil { env["TERM"] = ProcessInfo.processInfo.environment["TERM"] ?? "xterm" }
            let plan = try await daemon.client.execPlan(name, ExecRequest(command: command, environment: env, terminal: tty))
            if tty { try Self.replaceProcess(with: plan) }
            status = try Self.runInherited(plan)
        }
        if status != 0 { throw ExitCode(status) }
    }

    /// Becomes the plan's helper (execve): with a terminal nothing may sit between it and the
    /// user's tty (it sets raw mode, takes SIGWINCH, and its exit status is ours).
    static func replaceProcess(with plan: ExecPlan) throws -> Never {
        let executable = plan.argv[0].contains("/") ? plan.argv[0] : (Command.which(plan.argv[0]) ?? plan.argv[0])
        let argv = plan.argv.map { strdup($0) } + [nil]
        let envp = plan.environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        execve(executable, argv, envp)
        throw GodwitError("cannot run \(executable): \(String(cString: strerror(errno)))",
                          hint: "is Godwit fully installed (godwit-spawn next to godwit)?")
    }

    /// Runs the plan with this process's stdio; a signal death becomes 128+signal like a shell.
    static func runInherited(_ plan: ExecPlan) throws -> Int32 {
        let process = Process()
        let executable = plan.argv[0].contains("/") ? plan.argv[0]
            : (Command.which(plan.argv[0]) ?? plan.argv[0])
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = Array(plan.argv.dropFirst())
        process.environment = plan.environment
        do {
            try process.run()
        } catch {
            throw GodwitError("cannot run \(plan.argv[0]): \(error.localizedDescription)",
                              hint: "is Godwit fully installed (godwit-spawn next to godwit)?")
        }
        process.waitUntilExit()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }
}
