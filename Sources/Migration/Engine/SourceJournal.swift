import Foundation
import Checkpoint
import GodwitCore
import Memory

/// Where a move out of this host stands, kept on disk from the destination's acceptance to
/// the end so that a daemon that died mid-move can finish the job at its next start.
public struct SourceJournal: Codable, Sendable, Equatable {
    public enum Phase: String, Codable, Sendable {
        /// Planning with the destination; no migration there yet (`migrationID` empty). A
        /// restart only records that the move ended, and how.
        case negotiation
        /// The destination accepted; the container runs here (files and pre-copy rounds go
        /// out). A restart then only has to tell the destination, and record the rollback:
        /// without this the move left no trace and the destination a Creating row until
        /// its abandon timer (found by the fault matrix).
        case transferring
        /// CRIU may hold the container frozen; its tasks were not doomed.
        case frozen
        /// The commit was decided: the tasks are (being) killed; the destination decides.
        case doomed
    }

    /// Empty until the destination accepted.
    public var migrationID: String
    /// The remote the container moves to.
    public var peer: String
    public var container: String
    public var phase: Phase
    public var initPID: pid_t
    /// The dump's images directory: names the container's CRIU processes.
    public var imagesDirectory: String

    public init(migrationID: String, peer: String, container: String, phase: Phase, initPID: pid_t, imagesDirectory: String) {
        self.migrationID = migrationID; self.peer = peer; self.container = container; self.phase = phase
        self.initPID = initPID; self.imagesDirectory = imagesDirectory
    }

    public func write(to path: String) throws { try JournalFile.write(self, to: path) }
    public static func read(_ path: String) -> SourceJournal? { JournalFile.read(SourceJournal.self, from: path) }
}

/// What a restarted source daemon does with a move its predecessor left half-done.
public enum SourceRecovery {
    public enum Outcome: Sendable, Equatable {
        /// The container runs here again (thawed, network unlocked); the destination was
        /// asked to drop its copy.
        case rolledBack
        /// The destination runs the container: this host's copy goes.
        case moved
        /// The tasks were doomed and the destination does not hold the container.
        case lost(String)
    }

    /// What the destination says about the migration (its phase), or nil if it can't be
    /// asked; and how to ask it to commit or abort.
    public struct Destination: Sendable {
        public var status: @Sendable () async -> String?
        public var commit: @Sendable () async -> String?
        public var abort: @Sendable () async -> Void
        /// After a lazy commit: this host can't serve the missing pages any more.
        public var sourceLost: @Sendable () async -> Void
        public init(status: @escaping @Sendable () async -> String?, commit: @escaping @Sendable () async -> String?,
                    abort: @escaping @Sendable () async -> Void, sourceLost: @escaping @Sendable () async -> Void) {
            self.status = status; self.commit = commit; self.abort = abort; self.sourceLost = sourceLost
        }
    }

    public static func recover(_ entry: SourceJournal, cgroup: Cgroup, destination: Destination) async -> Outcome {
        let tasks = ContainerProcesses.hostPIDs(cgroupDirectories: cgroup.directories)
        // "doomed" is written just before the kill: if no task got it, nothing was decided.
        let doomed = entry.phase == .doomed && (tasks.isEmpty || tasks.contains { SourceTermination.isDoomed($0) })
        guard doomed else {
            // The old daemon's CRIU may still hold the tasks (a lazy page server nobody
            // connected to never gives them back): end it, then thaw what it froze.
            await blocking { killCRIU(using: entry.imagesDirectory) }
            try? cgroup.thaw()
            CRIUNetworkLock.removeLeftover(initPID: entry.initPID, tasks: cgroup.processes())
            await destination.abort()
            return .rolledBack
        }
        // Past the point of no return: the destination holds the only copy, or nobody does.
        switch await destination.status() {
        case "done":
            return .moved
        case "fetching":
            // The old daemon's relay held CRIU's page-server connection; it reset when the
            // daemon died, so CRIU's page server is gone and the missing pages with it.
            await destination.sourceLost()
            return .lost("this daemon restarted during the background page transfer; CRIU's page server went with it")
        case "restored":
            if let phase = await destination.commit(), ["done", "fetching"].contains(phase) { return .moved }
            return .lost("the destination did not take the commit after this daemon restarted")
        case let phase?:
            return .lost("the destination reports the migration \(phase)")
        case nil:
            return .lost("the destination could not be asked after this daemon restarted")
        }
    }

    /// SIGKILL to every CRIU process working on this images directory (its cmdline names
    /// it; the comm may be the private prefix's loader, so the arguments decide).
    static func killCRIU(using imagesDirectory: String) {
        let procs = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for name in procs {
            guard let pid = pid_t(name), pid != getpid(),
                  let cmdline = HostEnvironment.readBytes("/proc/\(name)/cmdline") else { continue }
            let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if args.contains(imagesDirectory), args.contains(where: { $0 == "criu" || $0.hasSuffix("/criu") }) {
                kill(pid, SIGKILL)
                _ = poll(timeout: 5) { kill(pid, 0) != 0 }
            }
        }
    }
}
