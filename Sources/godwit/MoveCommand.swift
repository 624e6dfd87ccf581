import API
import ArgumentParser
import Client
import Foundation
import GodwitCore


struct MoveCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "move", abstract: "Move a running container to another host, live.",
        discussion: """
            TARGET is REMOTE: or REMOTE:NEWNAME, a remote from `godwit remote list`. The container \
            keeps its processes, memory, files, address and TCP connections.

            Modes: stop-and-copy freezes, copies everything, restores; pre-copy copies memory in \
            rounds while the container runs, then freezes and sends only what changed; post-copy \
            restores at once and fetches memory on demand while the rest streams in; hybrid runs \
            pre-copy rounds, then restores lazily from the copied pages; auto (default) picks the \
            best both hosts support, and post-copy or hybrid only for a container with \
            migration.postcopy=true.

            Any failure before the destination takes over leaves the container running here. In \
            post-copy, once the destination runs, this host's copy is gone: if the link fails \
            before every page arrived, the container is lost rather than running twice.
            """)

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Container name.") var name: String
    @Argument(help: "REMOTE: or REMOTE:NEWNAME.") var target: String
    @Option(help: "auto, stop-and-copy, pre-copy, post-copy or hybrid.") var mode: String = "auto"
    @Option(help: ArgumentHelp("Cap on the memory pages this move sends, e.g. 100mbit, 1gbit or 50mbps (bytes/s, as in tc); unlimited lifts the container's migration.bandwidth.",
                               valueName: "rate"))
    var bandwidth: String?
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            try ContainerName.validate(name)
            let strategy = try MigrationStrategy.parse(mode: mode)
            let cap = try bandwidth.map { try MoveBandwidth(parsing: $0) }
            guard let colon = target.firstIndex(of: ":"), colon != target.startIndex else {
                throw GodwitError("target '\(target)' names no remote", hint: "write REMOTE: or REMOTE:NEWNAME, e.g. `godwit move \(name) h2:`")
            }
            let remote = String(target[..<colon])
            let newName = String(target[target.index(after: colon)...])
            if !newName.isEmpty { try ContainerName.validate(newName) }
            let client = daemon.client
            let operation = try await client.move(name, MoveRequest(target: remote, newName: newName.isEmpty ? nil : newName, mode: strategy,
                                                                     bandwidth: cap))
            var meter = ProgressMeter()
            let done: OperationInfo
            do {
                done = try await client.follow(operation) { meter.show($0) }
                meter.clear()
            } catch {
                meter.clear()
                throw error
            }
            guard let json = done.metadata["report"],
                  let report = try? APICoding.decoder().decode(MoveReport.self, from: Data(json.utf8)) else {
                throw GodwitError("the move finished but the daemon sent no report")
            }
            if format == .json { return try CLI.printJSON(report) }
            print(report.text)
        }
    }
}

/// Live progress on stderr: phase, bytes, rate, ETA; one rewritten line on a terminal,
/// plain lines otherwise.
struct ProgressMeter {
    let terminal = isatty(STDERR_FILENO) == 1
    var last: (at: Date, bytes: UInt64)?
    var inline = false

    mutating func show(_ op: OperationInfo) {
        guard let progress = op.progress else { return }
        var line = progress.stage
        if let bytes = progress.processedBytes {
            line += String(format: ": %.1f MiB", Double(bytes) / 1048576)
            if let total = progress.totalBytes, total > 0 { line += String(format: " of %.1f MiB", Double(total) / 1048576) }
            let now = Date()
            // The daemon's own rate and ETA when it sends them (a move's engine measures per
            // phase and per round); else from the bytes seen between two updates.
            var rate = progress.bytesPerSecond
            if rate == nil, let last, bytes > last.bytes, now.timeIntervalSince(last.at) > 0 {
                rate = Double(bytes - last.bytes) / now.timeIntervalSince(last.at)
            }
            if let rate, rate > 0 {
                line += String(format: " at %.1f MiB/s", rate / 1048576)
                let eta = progress.etaSeconds ?? progress.totalBytes.flatMap { $0 > bytes ? Double($0 - bytes) / rate : nil }
                if let eta { line += String(format: ", ETA %.1f s", eta) }
            }
            last = (now, bytes)
        }
        if terminal {
            FileHandle.standardError.write(Data("\r\u{1b}[K\(line)".utf8))
            inline = true
        } else {
            CLI.note(line)
        }
    }

    mutating func clear() {
        if inline { FileHandle.standardError.write(Data("\r\u{1b}[K".utf8)) }
        inline = false
    }
}
