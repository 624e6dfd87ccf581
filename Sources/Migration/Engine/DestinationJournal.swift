import API
import Foundation
import GodwitCore
import Memory

/// Where a move into this host stands once something was restored, kept on disk so that a
/// daemon that dies there leaves its successor enough to finish the move or undo it:
/// before, a restart removed every half-received container like an interrupted launch,
/// which lost the container whenever the source had already doomed its own tasks.
///
/// Written by the engine (through its host) at `restored` and again just before the
/// commit runs the tasks, removed when the move ends.
public struct DestinationJournal: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// Restored, tasks stopped, not committed: the source decides (commit or abort).
        case restored
        /// The commit was taken: the source's tasks are doomed; this copy must run.
        case committing
    }

    public var migrationID: String
    public var container: String
    /// Who may commit or abort it: the source's certificate fingerprint and name.
    public var peerFingerprint: String
    public var peerName: String
    public var mode: MigrationStrategy
    public var phase: Phase
    /// The restored init's host pid.
    public var pid: pid_t

    public init(migrationID: String, container: String, peerFingerprint: String, peerName: String,
                mode: MigrationStrategy, phase: Phase, pid: pid_t) {
        self.migrationID = migrationID; self.container = container; self.peerFingerprint = peerFingerprint
        self.peerName = peerName; self.mode = mode; self.phase = phase; self.pid = pid
    }

    public func write(to path: String) throws { try JournalFile.write(self, to: path) }
    public static func read(_ path: String) -> DestinationJournal? { JournalFile.read(DestinationJournal.self, from: path) }
}

/// A journal on disk: written whole or not at all (AtomicFile, owner-only, not fsynced: it
/// serves a restarted daemon, and is written inside the frozen window), and read back only
/// if small and well-formed.
enum JournalFile {
    static func write(_ value: some Encodable, to path: String) throws {
        try AtomicFile.write(try JSONEncoder().encode(value), to: URL(fileURLWithPath: path), durable: false)
    }

    static func read<T: Decodable>(_ type: T.Type, from path: String) -> T? {
        guard let data = FileManager.default.contents(atPath: path), data.count < 64 << 10 else { return nil }
        return try? JSONDecoder().decode(type, from: data)
    }
}

/// A container a previous daemon restored by copy (all its memory in its tasks, stopped)
/// and had not run yet: the restarted daemon holds it for the source's commit or abort.
/// Nothing of the original restore survives a daemon restart but the tasks and their cgroup,
/// so committing is the release alone; a lazy restore can't be taken over this way (its
/// page server died with the daemon).
public final class AdoptedRestore: RestoreMethod, Sendable {
    public let cgroup: Cgroup
    public let pid: pid_t
    public var kind: RestoreKind { .copy }
    public var figures: IncomingFigures { IncomingFigures() }
    public var restoredPID: pid_t? { pid }

    public init(cgroup: Cgroup, pid: pid_t) { self.cgroup = cgroup; self.pid = pid }

    public func restore(pages: Int32, push: Int32?) throws -> pid_t {
        throw GodwitError("a restore taken over after a daemon restart can't be restored again")
    }

    public func commit() throws {
        try cgroup.thaw()
        for task in ContainerProcesses.hostPIDs(cgroupDirectories: cgroup.directories) { kill(task, SIGCONT) }
    }

    public func waitUntilLocal(timeout: TimeInterval) -> IncomingFigures { figures }

    public func abort() { try? cgroup.kill() }
}
