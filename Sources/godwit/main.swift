import ArgumentParser
import Foundation
import GodwitCore

struct Godwit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "godwit",
        abstract: "System containers that move live between hosts.",
        discussion: "Godwit runs system containers and migrates them with CRIU, pre-copy tracked by userfaultfd write-protection, post-copy and hybrid. Container verbs talk to godwitd (--dir or GODWIT_DIR selects which).",
        subcommands: [
            LaunchCommand.self, ListCommand.self, InfoCommand.self, ExecCommand.self,
            StartCommand.self, StopCommand.self, RestartCommand.self, FreezeCommand.self, UnfreezeCommand.self,
            DeleteCommand.self, ConfigCommand.self, ConsoleCommand.self, ImageCommand.self, OperationCommand.self,
            MonitorCommand.self, MoveCommand.self, FileCommand.self, TrustCommand.self, RemoteCommand.self,
            CheckCommand.self, LabCommand.self, BenchCommand.self, DemoCommand.self, InitCommand.self, NetworkCommand.self,
        ])
}

// Errors reach the user as "error: <what>\nhint: <what to do>" with a non-zero exit.
// What AsyncParsableCommand.main() does, inside an async function: in top-level code the
// compiler picks ParsableCommand's synchronous overloads of main() and run().
func runCommand() async {
    do {
        var command = try Godwit.parseAsRoot()
        if var asyncCommand = command as? any AsyncParsableCommand {
            try await asyncCommand.run()
        } else {
            try command.run()
        }
    } catch {
        Godwit.exit(withError: error)
    }
}

await runCommand()
