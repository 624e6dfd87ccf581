import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

struct ImageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "image", abstract: "Manage images (busybox is built in on first use).",
        subcommands: [List.self, Import.self, Build.self, Export.self, Delete.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List images.", aliases: ["ls"])
        @OptionGroup var daemon: DaemonOptions
        @Option(help: "human or json") var format: OutputFormat = .human

        func run() async throws {
            try await CLI.run {
                let images = try await daemon.client.images()
                if format == .json { return try CLI.printJSON(images) }
                var table = TextTable(header: ["ALIAS", "FINGERPRINT", "OS", "RELEASE", "ARCHITECTURE", "SIZE", "DESCRIPTION"])
                func shown(_ value: String) -> String { value.isEmpty ? "-" : value }
                for i in images {
                    table.add([i.alias, String(i.fingerprint.prefix(12)), shown(i.os), shown(i.release), shown(i.architecture),
                               ByteSize.format(i.sizeBytes), i.description])
                }
                print(table.render())
            }
        }
    }

    struct Import: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Import a rootfs tarball or an LXD image.",
            discussion: """
                One file: a tar archive (optionally compressed) of a root filesystem, or a unified \
                LXD image (metadata.yaml and rootfs/). Two files: a split LXD image, metadata \
                tarball first, then the rootfs as a tarball or squashfs.
                """)
        @OptionGroup var daemon: DaemonOptions
        @Argument(help: "The image, or the metadata half of a split LXD image.") var tarball: String
        @Argument(help: "The rootfs half of a split LXD image.") var rootfs: String?
        @Option(help: "Name to launch it by.") var alias: String

        func run() async throws {
            try await CLI.run {
                // The daemon runs on this host: give it absolute paths to read.
                let paths = try ([tarball] + (rootfs.map { [$0] } ?? [])).map { file in
                    let path = URL(fileURLWithPath: file).standardizedFileURL.path
                    guard FileManager.default.fileExists(atPath: path) else { throw GodwitError("no such file: \(file)") }
                    return path
                }
                let client = daemon.client
                let request = ImageImportRequest(tarball: paths[0], rootfs: paths.count > 1 ? paths[1] : nil, alias: alias)
                let done = try await CLI.follow(client, try await client.importImage(request))
                CLI.note("Imported \(alias) (\(done.metadata["fingerprint"]?.prefix(12) ?? ""))")
            }
        }
    }

    struct Build: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Build a Debian image with mmdebstrap (systemd as init).",
            discussion: """
                Builds are cached host-wide by recipe (release and packages) in \
                /var/cache/godwit/images (GODWIT_IMAGE_CACHE overrides it, read by godwitd): \
                a second build of the same recipe only unpacks. --refresh rebuilds.
                """)
        @OptionGroup var daemon: DaemonOptions
        @Argument(help: "The distribution: debian.") var distribution: String
        @Option(help: "bookworm or trixie.") var release: String = "bookworm"
        @Option(help: "Extra packages, comma-separated (e.g. nginx-light,curl).") var include: String = ""
        @Option(help: "Name to launch it by.") var alias: String
        @Flag(help: "Rebuild even if the cache has this recipe.") var refresh = false

        func run() async throws {
            try await CLI.run {
                let packages = include.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
                let client = daemon.client
                let request = ImageBuildRequest(distribution: distribution, release: release, include: packages,
                                                alias: alias, refresh: refresh)
                let done = try await CLI.follow(client, try await client.buildImage(request))
                CLI.note("Built \(alias) (\(done.metadata["fingerprint"]?.prefix(12) ?? ""))")
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write an image as a unified LXD image tarball (metadata.yaml + rootfs/).")
        @OptionGroup var daemon: DaemonOptions
        @Argument var alias: String
        @Argument(help: "Output file; .tar, .tar.gz, .tar.xz, .tar.zst or .tar.bz2 picks the compression.") var output: String

        func run() async throws {
            try await CLI.run {
                let path = URL(fileURLWithPath: output).standardizedFileURL.path
                let client = daemon.client
                _ = try await CLI.follow(client, try await client.exportImage(alias, ImageExportRequest(path: path)))
                CLI.note("Exported \(alias) to \(path)")
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
