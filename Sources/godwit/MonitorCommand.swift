import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

/// `lxc monitor`: the daemon's event stream, one JSON object per line, until interrupted.
struct MonitorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "monitor", abstract: "Print the daemon's events (operation, logging, lifecycle) as JSON lines.")

    @OptionGroup var daemon: DaemonOptions
    @Option(name: .customLong("type"), help: "Only these event types (repeatable).") var types: [EventType] = []

    func run() async throws {
        try await CLI.run {
            let encoder = APICoding.encoder()
            for try await event in try await daemon.client.events(types: types) {
                print(String(decoding: try encoder.encode(event), as: UTF8.self))
                fflush(nil)  // every stream: `stdout` is shared mutable state to Swift 6
            }
        }
    }
}

extension EventType: ExpressibleByArgument {}
