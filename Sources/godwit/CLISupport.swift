import API
import ArgumentParser
import Client
import Foundation
import GodwitCore
import Lab

/// `--dir`: which daemon to talk to (its state directory; the socket is inside).
struct DaemonOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("State directory of the godwitd to use, or LAB/HOST for a lab host (default: $GODWIT_DIR or /var/lib/godwit).",
                                            valueName: "dir"))
    var dir: String?

    var stateDir: String { LabPaths.daemonDirectory(dir ?? GodwitClient.defaultStateDir()) }
    var client: GodwitClient { GodwitClient(stateDir: stateDir) }
}

enum CLI {
    /// Runs a command body; GodwitErrors become "error: ...\nhint: ..." and exit 1.
    static func run(_ body: () async throws -> Void) async throws {
        do {
            try await body()
        } catch let error as GodwitError {
            printError(error)
            throw ExitCode.failure
        }
    }

    static func printError(_ error: GodwitError) {
        var text = "error: " + error.message
        if !error.context.isEmpty {
            text += " (" + error.context.map { "\($0.0): \($0.1)" }.joined(separator: ", ") + ")"
        }
        if let hint = error.hint { text += "\nhint: " + hint }
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    static func note(_ text: String) {
        FileHandle.standardError.write(Data((text + "\n").utf8))
    }

    /// Follows an operation with progress on stderr: one rewritten line on a terminal,
    /// plain lines otherwise (logs, CI).
    @discardableResult
    static func follow(_ client: GodwitClient, _ operation: OperationInfo) async throws -> OperationInfo {
        let terminal = isatty(STDERR_FILENO) == 1
        var printedInline = false
        defer { if printedInline { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) } }
        return try await client.follow(operation) { op in
            guard let progress = op.progress else { return }
            var line = "\(op.description): \(progress.stage)"
            if let percent = progress.percent { line += " \(percent)%" }
            if terminal {
                FileHandle.standardError.write(Data("\r\u{1b}[K\(line)".utf8))
                printedInline = true
            } else {
                note(line)
            }
        }
    }

    static func format(_ date: Date?) -> String {
        guard let date else { return "-" }
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: date)
    }

    static func printJSON<T: Encodable>(_ value: T) throws {
        print(String(decoding: try APICoding.encoder(pretty: true).encode(value), as: UTF8.self))
    }
}

extension OutputFormat: ExpressibleByArgument {}
