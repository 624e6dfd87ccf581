import API
import ArgumentParser
import Client
import Foundation
import GodwitCore

// `godwit trust ...` manages who may call this host's daemon over HTTPS; `godwit remote ...`
// manages which daemons this host's daemon calls. Joining is: `trust add NAME` on the
// server, then `remote add SERVER --token T` on the client.

struct TrustCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "trust", abstract: "Manage the hosts trusted to call this daemon over HTTPS.",
        subcommands: [TrustAdd.self, TrustList.self, TrustRemove.self])
}

struct TrustAdd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Create a one-time join token for a host that will be known as NAME.")

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Name the joining host will have here (e.g. its host name).") var name: String
    @Option(help: "Seconds the token stays valid (default: 3600).") var expiresIn: Double?
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            if let expiresIn, expiresIn <= 0 {
                throw GodwitError("--expires-in must be positive (got \(expiresIn))")
            }
            let client = daemon.client
            let info = try await client.createTrustToken(TrustTokenRequest(name: name, lifetime: expiresIn))
            if format == .json { return try CLI.printJSON(info) }
            print(info.token)
            // The name the joining host will use for us: ours, as a suggestion.
            let us = (try? await client.serverInfo().hostName) ?? "NAME-OF-THIS-HOST"
            CLI.note("""
                Join token for '\(info.name)', valid once until \(CLI.format(info.expiresAt)).
                On \(info.name) run: godwit remote add \(us) --token \(info.token)
                """)
        }
    }
}

struct TrustList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List trusted hosts and unused tokens.",
                                                    aliases: ["ls"])

    @OptionGroup var daemon: DaemonOptions
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            let entries = try await daemon.client.trustEntries()
            if format == .json { return try CLI.printJSON(entries) }
            var table = TextTable(header: ["NAME", "KIND", "FINGERPRINT", "SINCE", "EXPIRES"])
            for entry in entries {
                table.add([entry.name, entry.kind, entry.fingerprint.map { String($0.prefix(16)) } ?? "-",
                           CLI.format(entry.since), CLI.format(entry.expiresAt)])
            }
            print(table.render())
        }
    }
}

struct TrustRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Stop trusting a host (effective on its next request), or revoke its unused token.",
        aliases: ["rm"])

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Name, or fingerprint (at least 8 leading hex digits).") var nameOrFingerprint: String

    func run() async throws {
        try await CLI.run {
            let removed = try await daemon.client.removeTrust(nameOrFingerprint)
            CLI.note(removed.kind == "token" ? "Revoked the unused join token for '\(removed.name)'"
                                             : "No longer trusting '\(removed.name)' (\(removed.fingerprint ?? "?"))")
        }
    }
}

struct RemoteCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remote", abstract: "Manage the daemons this host's daemon talks to (pinned by certificate).",
        subcommands: [RemoteAdd.self, RemoteList.self, RemoteInfoCommand.self, RemoteRemove.self])
}

struct RemoteAdd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "add", abstract: "Join a remote daemon with a token from `godwit trust add` there.")

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Name for the remote here (e.g. its host name).") var name: String
    @Argument(help: "https://ADDR[:PORT] of the remote (default: the addresses in the token).") var url: String?
    @Option(help: "The join token.") var token: String
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            let remote = try await daemon.client.addRemote(RemoteAddRequest(name: name, url: url, token: token))
            if format == .json { return try CLI.printJSON(remote) }
            CLI.note("Added remote '\(remote.name)' at \(remote.url), certificate \(remote.fingerprint)")
        }
    }
}

struct RemoteList: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List remotes.", aliases: ["ls"])

    @OptionGroup var daemon: DaemonOptions
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            let remotes = try await daemon.client.remotes()
            if format == .json { return try CLI.printJSON(remotes) }
            var table = TextTable(header: ["NAME", "URL", "FINGERPRINT", "SERVER", "ADDED"])
            for remote in remotes {
                table.add([remote.name, remote.url, String(remote.fingerprint.prefix(16)), remote.serverName ?? "-",
                           CLI.format(remote.addedAt)])
            }
            print(table.render())
        }
    }
}

struct RemoteInfoCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "info", abstract: "Ask a remote who it is, over mutual TLS (checks reachability, pin and trust).")

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Remote name.") var name: String
    @Option(help: "human or json") var format: OutputFormat = .human

    func run() async throws {
        try await CLI.run {
            let info = try await daemon.client.remoteServer(name)
            if format == .json { return try CLI.printJSON(info) }
            var table = TextTable()
            table.add(["Remote:", name])
            table.add(["Host:", info.name])
            table.add(["Version:", info.version])
            table.add(["Certificate:", info.fingerprint])
            table.add(["Knows us as:", info.client ?? "-"])
            print(table.render())
        }
    }
}

struct RemoteRemove: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "remove", abstract: "Forget a remote (it keeps trusting this host until `godwit trust remove` there).",
        aliases: ["rm"])

    @OptionGroup var daemon: DaemonOptions
    @Argument(help: "Remote name.") var name: String

    func run() async throws {
        try await CLI.run {
            let removed = try await daemon.client.removeRemote(name)
            CLI.note("Removed remote '\(removed.name)' (\(removed.url))")
        }
    }
}
