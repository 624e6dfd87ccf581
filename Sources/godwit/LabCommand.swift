import ArgumentParser

// Owned by the Lab work: replaced with up/down/status/shape.
struct LabCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "lab", abstract: "Simulated hosts on this machine.")
}
