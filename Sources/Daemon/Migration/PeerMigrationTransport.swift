import API
import Foundation
import GodwitCore
import Migration
import NIOHTTP1
import Trust

/// The engine's transport between daemons: control calls are REST over HTTPS with mutual
/// TLS (`/1.0/migrations/...`), data channels are PeerStreams that present the migration's
/// secret. Nothing here decides anything about a move.
struct PeerMigrationTransport: MigrationPeer {
    let client: PeerClient
    let trust: TrustLayer

    var name: String { client.remote.name }

    func capabilities() async throws -> PeerCapabilities { try await client.call(.GET, "/1.0/migrations/check") }

    func begin(_ request: IncomingMigrationRequest) async throws -> any MigrationSession {
        let answer: IncomingMigrationAnswer = try await client.call(.POST, "/1.0/migrations", body: request)
        return Session(client: client, trust: trust, answer: answer)
    }

    struct Session: MigrationSession {
        let client: PeerClient
        let trust: TrustLayer
        let answer: IncomingMigrationAnswer
        var id: String { answer.id }
        var imageNeeded: Bool { answer.imageNeeded ?? false }

        func open(_ channel: MigrationChannel) throws -> Int32 { try open(channel, within: 10) }

        func open(_ channel: MigrationChannel, within seconds: Double) throws -> Int32 {
            let millis = Int64(min(max(seconds, 0.5), 10) * 1000)  // finite and bounded: NIO traps on neither
            do {
                return try PeerStream.openBlocking(remote: client.remote, identity: trust.identity, port: answer.streamPort,
                                                   header: PeerStreamHeader(migration: answer.id, secret: answer.secret, channel: channel.rawValue),
                                                   connectTimeout: .milliseconds(millis))
            } catch let error as GodwitError {
                // The daemon answered no (the migration ended there), or nothing listens on
                // its data port any more (the daemon that held the migration is gone; a new
                // one never resumes it): final. A link that is down times out instead.
                if error.context.contains(where: { $0.0 == "status" || $0.0 == "refused" }) { throw ChannelRefused(error.message) }
                throw error
            }
        }

        func beginRestore() async throws -> IncomingMigrationStatus { try await client.call(.POST, "/1.0/migrations/\(id)/restore") }
        func commit() async throws -> IncomingMigrationStatus { try await client.call(.POST, "/1.0/migrations/\(id)/commit") }
        /// A destination that answers 404 no longer knows the migration: its daemon restarted
        /// and dropped what it had received (a restored copy included). Said as "aborted" with
        /// why, so the source rolls back, or past the commit reports the loss, at once
        /// instead of asking again for minutes (the fault matrix's commit × dst-kill).
        func status() async throws -> IncomingMigrationStatus {
            do {
                return try await client.call(.GET, "/1.0/migrations/\(id)")
            } catch let error as TrustError where error.status == 404 {
                var status = IncomingMigrationStatus(id: id, phase: "aborted")
                status.reason = "\(client.remote.name) no longer knows migration \(id) (its daemon restarted?): \(error.error.message)"
                return status
            }
        }

        func abort(reason: String) async {
            _ = try? await client.send(.DELETE, "/1.0/migrations/\(id)", timeout: .seconds(30))
        }

        func sourceLost() async {
            _ = try? await client.send(.POST, "/1.0/migrations/\(id)/source-lost", timeout: .seconds(30))
        }

        func deliver(_ report: MoveReport) async {
            _ = try? await client.call(.POST, "/1.0/migrations/reports", body: report) as [String: String]
        }

        /// The HTTP client is the caller's (MoveSource shuts it down on every path).
        func close() async {}
    }
}
