import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Runtime
import Testing

/// The destination host of an engine test: a rootfs of its own (overlay on the same image,
/// filled by the move's rsync), a cgroup under the destination's parent, CRIU restoring
/// into the destination's network namespace. What the daemon's host does, without records.
final class LabDestinationHost: DestinationHost, @unchecked Sendable {
    let lab: MigrationLab
    let rootfs: RootFS
    let cgroup: Cgroup
    let veth: Veth?
    private let lock = NSLock()
    private var adoptedValue: pid_t?
    private var lostValue: String?
    private var discardedValue = false
    private var journalPhases: [DestinationJournal.Phase?] = []

    init(lab: MigrationLab, source: RunningContainer, tag: String, image: String? = nil) throws {
        self.lab = lab
        rootfs = RootFS(image: image ?? lab.image, directory: lab.directory + "/dst-" + tag, kind: source.rootfs.kind)
        cgroup = lab.destinationCgroup(for: source)
        veth = source.veth
        try FileManager.default.createDirectory(atPath: syncDirectory, withIntermediateDirectories: true)
        lab.destinationRoots.append(rootfs)
    }

    var hostName: String { "lab-destination" }
    var syncDirectory: String { rootfs.kind == .overlay ? rootfs.upperPath : rootfs.path }
    var adopted: pid_t? { lock.withLock { adoptedValue } }
    var lost: String? { lock.withLock { lostValue } }
    var discarded: Bool { lock.withLock { discardedValue } }
    /// Every journal write, in order (nil: removed).
    var journaled: [DestinationJournal.Phase?] { lock.withLock { journalPhases } }

    func restoreTarget(images: String, store: String) throws -> IncomingTarget {
        try rootfs.prepare()
        var options = RestoreOptions(imagesDirectory: images, rootfs: rootfs.path, pidFile: images + "/restore.pid")
        if let veth {
            options.veths = [VethMapping(containerInterface: "eth0", hostInterface: veth.hostName, bridge: lab.bridge)]
        }
        options.cgroupRoot = "/" + cgroup.path
        return IncomingTarget(criu: try lab.criu(in: lab.destinationNetns), restore: options, cgroup: cgroup, storeDirectory: store)
    }

    func adopt(pid: pid_t) throws { lock.withLock { adoptedValue = pid } }
    func announce(pid: pid_t) {}
    func discard() async {
        try? cgroup.kill()
        try? cgroup.remove()
        try? rootfs.remove()
        lock.withLock { discardedValue = true }
    }
    func markLost(_ why: String) { lock.withLock { lostValue = why } }
    func pagesPending(_ pending: Bool) {}
    func journal(_ phase: DestinationJournal.Phase?, pid: pid_t) { lock.withLock { journalPhases.append(phase) } }
}

/// What one engine move in the lab produced.
struct EngineMove: Sendable {
    let peer: LoopbackPeer
    let destination: LabDestinationHost
    let result: Result<MoveReport, Error>
    /// Every progress line the engine reported.
    let progress: [String]
    /// The source engine after the move: its final state, the report of a failed move, and
    /// how many source tasks the commit doomed.
    let stateName: String
    let failureReport: MoveReport?
    let doomedTasks: Int

    var report: MoveReport? { try? result.get() }
    /// The report whether the move succeeded or not.
    var anyReport: MoveReport? { report ?? failureReport }
    var engine: DestinationEngine? { peer.engines.last }
    var figures: IncomingFigures { engine?.figures ?? IncomingFigures() }
}

extension MigrationLab {
    /// Every strategy offered on both sides: the lab host runs both.
    static func capabilities(_ host: String) throws -> PeerCapabilities {
        let version = try CRIU.locate().binary.requireUsableVersion()
        return PeerCapabilities(host: host, criuVersion: "\(version)", strategies: MigrationStrategy.allCases.map {
            StrategyOffer(strategy: $0.rawValue, asSource: true, asDestination: true, reason: nil)
        })
    }

    /// Moves `container` with the shipping engine through a loopback peer.
    func engineMove(_ container: RunningContainer, strategy: MigrationStrategy, tag: String, config: [String: String] = [:],
                    destinationImage: String? = nil, hooks: SourceHooks = SourceHooks(), bandwidth: MoveBandwidth? = nil,
                    prepare: (LoopbackPeer) -> Void = { _ in }) async throws -> EngineMove {
        let source = try capabilitiesPair()
        let criu = try criu(in: nil)
        let sourceContainer = SourceContainer(
            name: container.name, cgroup: container.cgroup, initPID: container.initPID,
            syncDirectory: container.rootfs.kind == .overlay ? container.rootfs.upperPath : container.rootfs.path,
            criu: criu, imagesDirectory: imagesRoot + "/src-" + tag, spawnHelper: Self.spawnHelper(),
            config: try ContainerConfig(validating: config), image: "lab", imageFingerprint: "lab", ipv4: nil, mac: "")
        let host = ContainerSourceHost(hostName: "lab-source", container: sourceContainer) { (source.0, .uffdWP) }
        let destination = try LabDestinationHost(lab: self, source: container, tag: tag, image: destinationImage)
        let capabilities = source.1
        let peer = LoopbackPeer(name: "lab-destination", directory: imagesRoot + "/dst-" + tag,
                                capabilities: { capabilities }, makeHost: { _ in destination })
        let lines = Lines()
        let engine = SourceEngine(host: host, peer: peer, request: MoveRequest(target: "lab-destination", mode: strategy, bandwidth: bandwidth),
                                  progress: ProgressReporter(interval: .seconds(1)) { lines.append($0.text) }, hooks: hooks)
        prepare(peer)
        let result: Result<MoveReport, Error>
        do { result = .success(try await engine.run()) } catch { result = .failure(error) }
        if case .failure(let error) = result { print("move failed: \(error)") }
        let failureReport = await engine.failureReport
        if let r = failureReport ?? (try? result.get()) {
            print("\(strategy.rawValue): \(r.outcome), frozen \(r.frozenMillis ?? -1) ms; phases: "
                  + r.phases.map { "\($0.name) \(Int($0.millis)) ms" }.joined(separator: ", "))
        }
        return EngineMove(peer: peer, destination: destination, result: result, progress: lines.all,
                          stateName: await engine.state.name, failureReport: failureReport, doomedTasks: await engine.doomedTasks)
    }

    private func capabilitiesPair() throws -> (PeerCapabilities, PeerCapabilities) {
        (try Self.capabilities("lab-source"), try Self.capabilities("lab-destination"))
    }
}

extension MigrationLab {
    /// Until `processes` writers run in the container (if given) and each has counted at
    /// least 3 rounds over its pages: memory touched, ready to be moved.
    static func waitUntilWriting(_ container: RunningContainer, processes: Int? = nil) {
        let rootfs = container.rootfs.path
        if let processes { _ = eventually(10) { Self.processes(of: container.cgroup).count == processes } }
        _ = eventually(10) { Self.processes(of: container.cgroup).allSatisfy { counter(rootfs: rootfs, nsPID: $0.nsPID) >= 3 } }
    }

    /// After a rollback: the source runs on (thawed, its writer counting and verifying its
    /// memory), nothing of the container is left on the destination, no CRIU is left.
    func expectRolledBack(_ container: RunningContainer, _ move: EngineMove,
                          sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(move.report == nil, sourceLocation: sourceLocation)
        #expect(move.failureReport?.outcome == "rolled-back", sourceLocation: sourceLocation)
        #expect(move.destination.discarded && move.engine?.stateName == "aborted", "the destination removed its copy",
                sourceLocation: sourceLocation)
        #expect(container.initProcess.isAlive, "the source container survived", sourceLocation: sourceLocation)
        let rootfs = container.rootfs.path
        let at = MigrationLab.counter(rootfs: rootfs, nsPID: 1)
        #expect(eventually(10) { MigrationLab.counter(rootfs: rootfs, nsPID: 1) > at + 2 }, "the source runs on (thawed)",
                sourceLocation: sourceLocation)
        let verdicts = MigrationLab.verify(cgroup: container.cgroup, rootfs: rootfs)
        #expect(verdicts[1]?.hasPrefix("ok") == true, "\(verdicts)", sourceLocation: sourceLocation)
        let dst = destinationCgroup(for: container)
        #expect(MigrationLab.processes(of: dst).isEmpty && !dst.exists, sourceLocation: sourceLocation)
        let state = HostEnvironment.read((container.cgroup.directory(for: "freezer") ?? "") + "/freezer.state")
        #expect(state == nil || state == "THAWED", sourceLocation: sourceLocation)
        #expect(eventually(10) { !criuRunning() }, "no CRIU process is left behind", sourceLocation: sourceLocation)
    }
}

/// The page contents of the container at the freeze, compared with the restored (still
/// stopped) processes before the commit: the hooks of a move that checks every page.
final class FreezeComparison: @unchecked Sendable {
    private let lock = NSLock()
    private var atFreeze = MemorySnapshot()
    private var differencesValue = ["not compared"]

    var pagesAtFreeze: Int { lock.withLock { atFreeze.pageCount } }
    var differences: [String] { lock.withLock { differencesValue } }

    func hooks(source: Cgroup, destination: Cgroup) -> SourceHooks {
        var hooks = SourceHooks()
        hooks.onReach = { [self] point in
            switch point {
            case .frozen:
                if let snap = try? MemorySnapshot.take(cgroup: source) { lock.withLock { atFreeze = snap } }
            case .beforeCommit:
                let reference = lock.withLock { atFreeze }
                let restored = (try? MemorySnapshot.take(cgroup: destination, like: reference)) ?? MemorySnapshot()
                lock.withLock { differencesValue = reference.differences(from: restored) }
            default:
                break
            }
        }
        return hooks
    }
}

final class Lines: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []
    func append(_ line: String) {
        print("progress: " + line)
        lock.withLock { lines.append(line) }
    }
    var all: [String] { lock.withLock { lines } }
}

/// TCP sockets in LISTEN state held by the CRIU processes working on `imagesDirectory`: a
/// lazy dump's page server must have none (it is handed its connection).
func criuListeningSockets(imagesDirectory: String) -> Int {
    var inodes = Set<String>()
    for name in (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? [] where Int(name) != nil {
        guard let cmdline = HostEnvironment.readBytes("/proc/\(name)/cmdline") else { continue }
        let args = cmdline.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        guard args.contains(imagesDirectory), args.contains("dump") else { continue }
        for fd in (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(name)/fd")) ?? [] {
            if let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(name)/fd/\(fd)"),
               target.hasPrefix("socket:[") {
                inodes.insert(String(target.dropFirst(8).dropLast()))
            }
        }
    }
    var listening = 0
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in (HostEnvironment.read(table) ?? "").split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ")
            if f.count > 9, f[3] == "0A", inodes.contains(String(f[9])) { listening += 1 }
        }
    }
    return listening
}

/// A sink that counts and drops: pre-copy rounds without a destination (the keys tests).
final class DiscardSink: ByteSink {
    private(set) var bytes: UInt64 = 0
    func write(_ buffer: UnsafeRawBufferPointer) throws { bytes += UInt64(buffer.count) }
}
