import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

struct ConfigCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config", abstract: "Read and change container configuration.",
        subcommands: [Set.self, Get.self, Unset.self, Show.self, Keys.self])

    struct Set: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Set a key (validated; applied live to running containers).")
        @OptionGroup var daemon: DaemonOptions
        @Argument var name: String
        @Argument var key: String
        @Argument var value: String

        func run() async throws {
            try await CLI.run {
                _ = try await daemon.client.patchConfig(name, ContainerPatch(config: [key: value]))
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a key's value (its default when unset).")
        @OptionGroup var daemon: DaemonOptions
        @Argument var name: String
        @Argument var key: String

        func run() async throws {
            try await CLI.run {
                if !key.hasPrefix(ConfigKey.environmentPrefix) && ConfigKey.definition(key) == nil {
                    _ = try ConfigKey.validate(key, "")  // throws the unknown-key error with the list
                }
                let info = try await daemon.client.container(name)
                print(ContainerConfig(info.config)[key] ?? "")
            }
        }
    }

    struct Unset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a key (back to its default).")
        @OptionGroup var daemon: DaemonOptions
        @Argument var name: String
        @Argument var key: String

        func run() async throws {
            try await CLI.run {
                let unset: [String: String?] = [key: String?.none]
                _ = try await daemon.client.patchConfig(name, ContainerPatch(config: unset))
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the keys set on a container.")
        @OptionGroup var daemon: DaemonOptions
        @Argument var name: String
        @Option(help: "human or json") var format: OutputFormat = .human

        func run() async throws {
            try await CLI.run {
                let config = try await daemon.client.container(name).config
                if format == .json { return try CLI.printJSON(config) }
                for key in config.keys.sorted() { print("\(key): \(config[key]!)") }
            }
        }
    }

    struct Keys: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List the known keys with their defaults.")
        func run() {
            var table = TextTable(header: ["KEY", "DEFAULT", "MEANING"])
            for d in ConfigKey.definitions { table.add([d.key, d.defaultValue ?? "-", d.help]) }
            table.add(["environment.NAME", "-", "environment variable of the container's init"])
            print(table.render())
        }
    }
}
