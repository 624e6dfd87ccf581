import API
import Foundation
import GodwitCore

/// The data channels of one migration. Each is one ordered byte stream from the source to
/// the destination (the page channel carries CRIU's page-server protocol both ways).
public enum MigrationChannel: String, Sendable, CaseIterable {
    /// rsync of the container's own files, while it runs and once more while it is frozen.
    case rsync
    /// rsync of the container's image (its rootfs), before anything else, to a destination
    /// that lacks it and said so in its answer to `begin`; refused by any other.
    case image
    /// Pre-copy rounds as PageRecords, then the final scan (and, for pre-copy, its pages).
    case precopy
    /// CRIU's images of the final dump, as one archive.
    case images
    /// CRIU's page-server protocol between the destination and the source's lazy dump.
    case pages
    /// Hybrid: the final dirty set, pushed in the background after the restore.
    case push
}

/// The destination answered and refused a data channel: it no longer holds the migration
/// (it ended there, or the daemon that held it is gone). Asking again can't help, so a page
/// channel being reconnected after a break gives up at once instead of for the grace period.
public struct ChannelRefused: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// How the source's half of the engine reaches a destination: a few control calls and data
/// channels. Between daemons this is HTTPS with mutual TLS plus authenticated streams; in
/// tests it is the destination engine in the same process behind socketpairs
/// (`LoopbackPeer`). Implementations must be safe to call from any task.
public protocol MigrationPeer: Sendable {
    /// The destination's name, for reports and errors.
    var name: String { get }
    /// The destination's own support check.
    func capabilities() async throws -> PeerCapabilities
    /// Asks the destination to take the container; the session carries the migration's
    /// identity (and, between daemons, its credentials).
    func begin(_ request: IncomingMigrationRequest) async throws -> any MigrationSession
}

/// One migration as the source sees its destination.
public protocol MigrationSession: Sendable {
    var id: String { get }
    /// The destination lacks the container's image and waits for it on the image channel.
    var imageNeeded: Bool { get }
    /// Opens a data channel; blocking (call it off the cooperative pool). The caller owns
    /// the returned descriptor.
    func open(_ channel: MigrationChannel) throws -> Int32
    /// Starts the restore from what the channels carried and answers at once (phase
    /// restoring); `status()` follows it to restored (tasks stopped) or aborted.
    func beginRestore() async throws -> IncomingMigrationStatus
    /// The source's tasks are doomed: the destination runs them. Idempotent: asked again
    /// after a lost answer, it answers with the status.
    func commit() async throws -> IncomingMigrationStatus
    func status() async throws -> IncomingMigrationStatus
    /// Before the commit: the destination removes everything it has of this migration.
    func abort(reason: String) async
    /// After a lazy commit: the source can't serve the missing pages any more (its CRIU
    /// page server is gone); the destination ends its wait as lost at once.
    func sourceLost() async
    /// The source's final report, so the destination's history has it too.
    func deliver(_ report: MoveReport) async
    /// Ends the session's connections.
    func close() async
    /// `open`, giving up on reaching the destination after about `seconds` (a reconnect
    /// must not outlast its grace period by a whole connect timeout).
    func open(_ channel: MigrationChannel, within seconds: Double) throws -> Int32
}

extension MigrationSession {
    public var imageNeeded: Bool { false }
    public func open(_ channel: MigrationChannel, within seconds: Double) throws -> Int32 { try open(channel) }
}
