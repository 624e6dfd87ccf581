import ArgumentParser
import Foundation
import GodwitCore

struct Godwit: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "godwit",
        abstract: "System containers that move live between hosts.",
        discussion: "Godwit runs system containers and migrates them with CRIU, pre-copy tracked by userfaultfd write-protection, post-copy and hybrid.",
        subcommands: [CheckCommand.self, LabCommand.self, BenchCommand.self, DemoCommand.self])
}

// Errors reach the user as "error: <what>\nhint: <what to do>" with a non-zero exit.
Godwit.main()
