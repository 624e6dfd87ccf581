import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

/// What the source half of the engine needs from the host the container runs on. The
/// engine decides *when*; the host knows *how* (cgroups, CRIU's leftovers, processes).
/// `ContainerSourceHost` is the implementation the daemon and the tests share; a test may
/// wrap it to inject faults.
public protocol SourceHost: Sendable {
    var hostName: String { get }
    /// The running container as the dump sees it.
    var container: SourceContainer { get }
    /// This host's own support check, as the destination will see it.
    func capabilities() async throws -> PeerCapabilities
    /// The dirty tracker `godwit check` chose here (nil: none works; hashing is then used).
    func hostTracker() async throws -> DirtyTrackerKind?
    /// Anonymous memory of the container (what `auto` sizes the move by).
    func memoryBytes() -> UInt64?
    /// No task can change a file any more (frozen, or every thread in a ptrace stop).
    func isHeldStill() -> Bool
    /// The commit: the source's tasks can never run again. Returns how many were doomed.
    func doom() throws -> Int
    /// After a failed dump: the container runs as before (thawed, network unlocked).
    func resume()
    /// Persists where a move stands (nil: no move), for the next daemon if this one dies.
    func journal(_ entry: SourceJournal?)
    /// Before the doom: what makes the doomed copy's network go quiet (best effort; the
    /// closure returns why not). Taken while the tasks live, run after the doom.
    func silencer() -> (@Sendable () -> String?)?
}

extension SourceHost {
    public func silencer() -> (@Sendable () -> String?)? { nil }
}

/// The source container: where its processes, files and CRIU are.
public struct SourceContainer: Sendable {
    public var name: String
    public var cgroup: Cgroup
    public var initPID: pid_t
    /// What the filesystem sync copies: the overlay's upper directory (the container's own
    /// changes; the image is on both hosts), or the whole rootfs for copied rootfs.
    public var syncDirectory: String
    public var criu: CRIU
    /// Where the final dump writes its images (emptied before the dump).
    public var imagesDirectory: String
    /// godwit-spawn, which runs rsync for the filesystem sync without the daemon forking.
    public var spawnHelper: String
    /// The container's keys (migration.*) as the planner and convergence read them.
    public var config: ContainerConfig
    /// What the destination records: the image it runs from, its address and MAC.
    public var image: String
    public var imageFingerprint: String
    public var ipv4: String?
    public var mac: String
    /// The image's own rootfs here and its size, for a destination that lacks the image
    /// (nil: this host can't carry it; such a destination refuses the move).
    public var imageRootfs: String?
    public var imageBytes: UInt64?

    public init(name: String, cgroup: Cgroup, initPID: pid_t, syncDirectory: String, criu: CRIU, imagesDirectory: String,
                spawnHelper: String, config: ContainerConfig,
                image: String, imageFingerprint: String, ipv4: String?, mac: String) {
        self.name = name; self.cgroup = cgroup; self.initPID = initPID; self.syncDirectory = syncDirectory
        self.criu = criu; self.imagesDirectory = imagesDirectory; self.spawnHelper = spawnHelper
        self.config = config
        self.image = image; self.imageFingerprint = imageFingerprint; self.ipv4 = ipv4; self.mac = mac
    }
}

/// The source host for a container in its own cgroup: the figures come from the cgroup,
/// the doom is SIGKILL to every task, the resume thaws and removes CRIU's network lock.
public struct ContainerSourceHost: SourceHost {
    public let hostName: String
    public let container: SourceContainer
    private let check: @Sendable () async throws -> (PeerCapabilities, DirtyTrackerKind?)

    /// Where the move's journal is kept (nil: nowhere, as in the engine tests).
    public let journalPath: String?

    public init(hostName: String, container: SourceContainer, journalPath: String? = nil,
                check: @escaping @Sendable () async throws -> (PeerCapabilities, DirtyTrackerKind?)) {
        self.hostName = hostName; self.container = container; self.journalPath = journalPath; self.check = check
    }

    public func journal(_ entry: SourceJournal?) {
        guard let journalPath else { return }
        if let entry { try? entry.write(to: journalPath) } else { try? FileManager.default.removeItem(atPath: journalPath) }
    }

    public func capabilities() async throws -> PeerCapabilities { try await check().0 }
    public func hostTracker() async throws -> DirtyTrackerKind? { try await check().1 }
    public func memoryBytes() -> UInt64? { container.cgroup.anonymousMemoryBytes }
    public func isHeldStill() -> Bool { container.cgroup.isHeldStill }
    public func doom() throws -> Int { try SourceTermination.killAll(cgroup: container.cgroup) }

    /// A lazy dump keeps the doomed copy's network namespace alive until the last page
    /// left (seconds, for post-copy): CRIU holds it open after the doom killed every task.
    /// Its kernel goes on: neighbour probes to the clients, with the container's MAC, about
    /// 5 s after the commit (the lab showed the bridges' learnt port for that MAC flip
    /// back to this host then, and clients lose the container for a second or two).
    /// CRIU's network lock is an inet table: it drops IP, not ARP. So the links go down.
    /// The namespace is opened now, while the init lives (after the doom /proc/PID/ns is
    /// gone); the closure enters it through this process's descriptor.
    public func silencer() -> (@Sendable () -> String?)? {
        let fd = open("/proc/\(container.initPID)/ns/net", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        let handle = NamespaceHandle(fd: fd)
        return {
            let net = "--net=/proc/\(getpid())/fd/\(handle.fd)"
            defer { handle.close() }
            let links: CommandResult
            do { links = try Command.run(["nsenter", net, "ip", "-o", "link", "show"]) } catch { return "\(error)" }
            guard links.succeeded else { return links.lastErrorLine }
            var failures: [String] = []
            for name in LinkListing.parse(links.stdout).map(\.name) where name != "lo" {
                let down = try? Command.run(["nsenter", net, "ip", "link", "set", "dev", name, "down"])
                if down?.succeeded != true { failures.append("\(name): \(down?.lastErrorLine ?? "ip did not run")") }
            }
            return failures.isEmpty ? nil : failures.joined(separator: "; ")
        }
    }

    public func resume() {
        try? container.cgroup.thaw()
        CRIUNetworkLock.removeLeftover(initPID: container.initPID, tasks: container.cgroup.processes())
    }
}

/// A namespace descriptor handed to the closure that uses it, closed exactly once.
final class NamespaceHandle: Sendable {
    let fd: Int32
    private let closed = Atomic<Bool>(false)
    init(fd: Int32) { self.fd = fd }
    func close() { if !closed.exchange(true, ordering: .relaxed) { Glibc.close(fd) } }
    deinit { close() }
}
