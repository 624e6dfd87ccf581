import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Manage images (busybox is built in on first use).",
        subcommands: [List.self, Import.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List images.", aliases: ["ls"])
        @OptionGroup var daemon: DaemonOptions
        @Option(help: "human or json") var format: OutputFormat = .human

        func run() async throws {
            try await CLI.run {
                let images = try await daemon.client.images()
                if format == .json { return try CLI.printJSON(images) }
                var table = TextTable(header: ["ALIAS", "FINGERPRINT", "SIZE", "DESCRIPTION"])
                for i in images {
                    table.add([i.alias, String(i.fingerprint.prefix(12)), ByteSize.format(i.sizeBytes), i.description])
                }
                print(table.render())
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Import a rootfs tarball.")
        @OptionGroup var daemon: DaemonOptions
        @Argument(help: "A tar archive (optionally compressed) of a root filesystem.") var tarball: String
        @Option(help: "Name to launch it by.") var alias: String

        func run() async throws {
            try await CLI.run {
                // The daemon runs on this host: give it an absolute path to read.
                let path = URL(fileURLWithPath: tarball).standardizedFileURL.path
                guard FileManager.default.fileExists(atPath: path) else {
                    throw GodwitError("no such file: \(tarball)")
                }
                let client = daemon.client
                let done = try await CLI.follow(client, try await client.importImage(ImageImportRequest(tarball: path, alias: alias)))
                CLI.note("Imported \(alias) (\(done.metadata["fingerprint"]?.prefix(12) ?? ""))")
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete an image alias (and its files when unused).", aliases: ["rm"])
        @OptionGroup var daemon: DaemonOptions
        @Argument var alias: String

        func run() async throws {
            try await CLI.run { try await daemon.client.deleteImage(alias) }
        }
    }
}

struct OperationCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "operation", abstract: "Follow the daemon's long-running operations.",
        subcommands: [List.self, Show.self, Wait.self, Cancel.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List operations.", aliases: ["ls"])
        @OptionGroup var daemon: DaemonOptions
        @Option(help: "human or json") var format: OutputFormat = .human

        func run() async throws {
            try await CLI.run {
                let operations = try await daemon.client.operations()
                if format == .json { return try CLI.printJSON(operations) }
                var table = TextTable(header: ["ID", "STATUS", "CREATED", "DESCRIPTION"])
                for o in operations { table.add([o.id, o.status.rawValue, CLI.format(o.createdAt), o.description]) }
                print(table.render())
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one operation as JSON.")
        @OptionGroup var daemon: DaemonOptions
        @Argument var id: String
        func run() async throws {
            try await CLI.run { try CLI.printJSON(try await daemon.client.operation(id)) }
        }
    }

    struct Wait: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Wait for an operation; non-zero exit if it failed.")
        @OptionGroup var daemon: DaemonOptions
        @Argument var id: String
        @Option(help: "Give up after this many seconds (default: wait as long as it takes).") var timeout: Double?
        func run() async throws {
            try await CLI.run {
                let client = daemon.client
                if let timeout {
                    let op = try await client.wait(id, timeout: timeout)
                    guard op.status.isFinal else {
                        throw GodwitError("operation \(id) still \(op.status.rawValue.lowercased()) after \(timeout) s")
                    }
                    try await client.follow(op)
                } else {
                    try await CLI.follow(client, try await client.operation(id))
                }
            }
        }
    }

    struct Cancel: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Cancel a running operation.")
        @OptionGroup var daemon: DaemonOptions
        @Argument var id: String
        func run() async throws {
            try await CLI.run { _ = try await daemon.client.cancel(id) }
        }
    }
}
