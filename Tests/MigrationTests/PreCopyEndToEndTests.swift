import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Runtime
import Testing

/// Real containers, real CRIU 4.2.1, the shipping engine (source and destination halves
/// through a loopback peer): pre-copy rounds while the writer runs, then the safe final
/// phase (lazy dump on the source, rebuilt images, plain restore on the destination).
@Suite(.serialized)
struct PreCopyEndToEndTests {
    /// Pre-copies with the given tracker and moves the container into the destination
    /// namespace; compares every page at the freeze with the restored processes' memory.
    func move(lab: MigrationLab, container: RunningContainer, kind: DirtyTrackerKind, goal: Int, rounds: Int,
              destinationImage: String? = nil) async throws -> (EngineMove, FreezeComparison) {
        let comparison = FreezeComparison()
        let move = try await lab.engineMove(
            container, strategy: .preCopy, tag: kind.rawValue,
            config: ["migration.incremental.memory.goal": "\(goal)", "migration.incremental.memory.iterations": "\(rounds)",
                     "migration.incremental.memory.autoconverge": "false", "migration.incremental.memory.tracker": kind.rawValue],
            destinationImage: destinationImage,
            hooks: comparison.hooks(source: container.cgroup, destination: lab.destinationCgroup(for: container)))
        if let report = move.report, let status = move.engine?.status() {
            #expect(status.roundsReceived == (report.rounds?.count ?? 0) + 1, "every round (and the final scan) arrived")
        }
        return (move, comparison)
    }

    @Test func uffdPreCopyMovesAContainerAndEveryPageMatches() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        // Two processes (a forked child), each 128 MiB touched in a 512 MiB mapping,
        // each rewriting 16 pages every 4 ms (~16 MB/s).
        let container = try lab.start(try lab.spec("uffd", writer: ["128", "512", "16", "4000", "1"]))
        let rootfs = container.rootfs.path
        #expect(eventually(10) { MigrationLab.processes(of: container.cgroup).count == 2 })
        #expect(eventually(10) { MigrationLab.processes(of: container.cgroup).allSatisfy { MigrationLab.counter(rootfs: rootfs, nsPID: $0.nsPID) >= 3 } })

        let (move, comparison) = try await move(lab: lab, container: container, kind: .uffdWP, goal: 100, rounds: 4)
        let report = try move.result.get()
        let pre = try #require(report.rounds)
        let memory = try #require(report.memory)
        let lazyPages = memory.lazyPages ?? 0, fromStore = memory.pagesFromStore ?? 0, fetched = memory.pagesFetched ?? 0
        let missing = lazyPages - fromStore, finalDirty = memory.finalDirtyPages ?? 0
        #expect(pre.count == 4, "goal=100 with a busy writer runs to the iteration limit")
        #expect(pre[0].dataPages >= 2 * 32768, "round 1 sends both processes' 128 MiB")
        #expect(pre.dropFirst().allSatisfy { $0.dirtyPages < pre[0].dirtyPages / 2 }, "later rounds send only what changed")
        #expect(comparison.pagesAtFreeze >= 2 * 32768)
        #expect(comparison.differences.isEmpty, "pages differing after restore: \(comparison.differences.prefix(10))")
        #expect(fromStore > 0 && fromStore == lazyPages - fetched)
        // Pre-copy sends the final dirty set right behind the final scan: the store lacks
        // only pages never tracked, and nothing is fetched through CRIU's page server.
        #expect(missing <= 64, "the store lacks only pages never tracked")
        #expect(memory.pagesPushed ?? 0 > 0 && (memory.pagesPushed ?? 0) >= finalDirty - 64, "the final dirty set went with the scan")
        #expect(fetched <= 64, "fetched ≈ nothing, not the dirty set")
        #expect(move.doomedTasks == 2)
        // Marker-free: the 384 untouched MiB of each mapping must not become dumped pages.
        // Counted from the dump's pagemaps (CRIU's stats-dump is empty after a lazy dump).
        let dumped = lazyPages + move.figures.presentPagesInDump
        #expect(dumped < 2 * 32768 + 8192, "CRIU dumped \(dumped) pages for 2 x 128 MiB touched")

        // The source is gone, the restored writers run on and verify all their memory.
        #expect(eventually(10) { !container.initProcess.isAlive })
        let dst = lab.destinationCgroup(for: container)
        let dstRoot = move.destination.rootfs.path
        let restored = MigrationLab.processes(of: dst)
        #expect(restored.count == 2)
        let before = restored.map { MigrationLab.counter(rootfs: dstRoot, nsPID: $0.nsPID) }
        #expect(eventually(10) { zip(restored, before).allSatisfy { MigrationLab.counter(rootfs: dstRoot, nsPID: $0.0.nsPID) > $0.1 + 2 } })
        let verdicts = MigrationLab.verify(cgroup: dst, rootfs: dstRoot)
        #expect(verdicts.count == 2 && verdicts.values.allSatisfy { $0.hasPrefix("ok") }, "\(verdicts)")
        // Reported, not asserted (timing belongs in benchmarks): the pause the writers saw.
        let gaps = verdicts.values.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }
        print(String(format: "application pause seen by the writers (max CLOCK_REALTIME gap): %.0f ms", (gaps.max() ?? 0) / 1000))
    }
}


extension PreCopyEndToEndTests {
    @Test func hashingTrackerPreCopyMovesAContainer() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("hash", writer: ["32", "32", "8", "4000", "0"]))
        let rootfs = container.rootfs.path
        #expect(eventually(10) { MigrationLab.counter(rootfs: rootfs, nsPID: 1) >= 3 })
        let (move, comparison) = try await move(lab: lab, container: container, kind: .hashing, goal: 100, rounds: 3)
        let report = try move.result.get()
        let pre = try #require(report.rounds)
        let memory = try #require(report.memory)
        #expect(memory.tracker == "hashing")
        #expect(pre.count == 3)
        #expect(pre[0].dataPages >= 8192)
        #expect(pre[1].dirtyPages < pre[0].dirtyPages / 2, "hashing reports only changed pages")
        #expect(comparison.differences.isEmpty, "pages differing after restore: \(comparison.differences.prefix(10))")
        let fromStore = memory.pagesFromStore ?? 0
        #expect(fromStore == (memory.lazyPages ?? 0) - (memory.pagesFetched ?? 0) && fromStore > 4000)
        #expect((memory.pagesFetched ?? 0) <= 64, "the final dirty set went with the scan: nothing left to fetch")
        let dst = lab.destinationCgroup(for: container)
        let dstRoot = move.destination.rootfs.path
        let at = MigrationLab.counter(rootfs: dstRoot, nsPID: 1)
        #expect(eventually(10) { MigrationLab.counter(rootfs: dstRoot, nsPID: 1) > at + 2 })
        let verdicts = MigrationLab.verify(cgroup: dst, rootfs: dstRoot)
        #expect(verdicts[1]?.hasPrefix("ok") == true, "\(verdicts)")
    }

    /// A seccomp profile that blocks userfaultfd(2): attaching uffd-wp fails with EPERM
    /// for both processes, which fall back to hashing; the move still verifies.
    @Test func seccompBlockedUserfaultfdFallsBackToHashing() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("sec", writer: ["16", "16", "8", "4000", "1", "1"]))
        let rootfs = container.rootfs.path
        #expect(eventually(10) { MigrationLab.processes(of: container.cgroup).count == 2 })
        #expect(eventually(10) { MigrationLab.processes(of: container.cgroup).allSatisfy { MigrationLab.counter(rootfs: rootfs, nsPID: $0.nsPID) >= 3 } })
        let (move, comparison) = try await move(lab: lab, container: container, kind: .uffdWP, goal: 100, rounds: 2)
        _ = try move.result.get()
        let notes = move.progress
        let fallbacks = notes.filter { $0.contains("tracked by hashing") }
        #expect(fallbacks.count == 2 && fallbacks.allSatisfy { $0.contains("EPERM") }, "\(notes)")
        #expect(comparison.differences.isEmpty, "pages differing after restore: \(comparison.differences.prefix(10))")
        let verdicts = MigrationLab.verify(cgroup: lab.destinationCgroup(for: container), rootfs: move.destination.rootfs.path)
        #expect(verdicts.count == 2 && verdicts.values.allSatisfy { $0.hasPrefix("ok") }, "\(verdicts)")
    }

    /// The configuration keys change the number of rounds as documented (no final phase
    /// needed to see it).
    @Test func keysDecideTheRounds() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let busy = try lab.start(try lab.spec("busy", writer: ["16", "16", "8", "4000", "0"]))
        let idle = try lab.start(try lab.spec("idle", writer: ["16", "16", "0", "4000", "0"]))
        #expect(eventually(10) { MigrationLab.counter(rootfs: busy.rootfs.path, nsPID: 1) >= 3 })
        usleep(200_000)  // the idle writer has filled its memory
        func rounds(_ c: RunningContainer, _ config: [String: String]) throws -> PreCopyReport {
            let tracker = ContainerDirtyTracker.forCgroup(c.cgroup, kind: .uffdWP)
            defer { tracker.close() }
            let settings = ConvergenceSettings(config: try ContainerConfig(validating: config))
            return try PreCopySession(tracker: tracker, sender: PreCopySender(writer: PageRecordWriter(sink: DiscardSink())),
                                      settings: settings).run()
        }
        // Auto-converge's lever: the CPU allowance goes down and comes back exactly.
        let throttle = try CPUThrottle(cgroup: busy.cgroup)
        let quotaFile = try busy.cgroup.file(busy.cgroup.layout.v1["cpu"] != nil ? "cpu.cfs_quota_us" : "cpu.max", of: "cpu")
        let original = HostEnvironment.read(quotaFile)
        try throttle.apply(percent: 40)
        #expect(HostEnvironment.read(quotaFile) != original)
        try throttle.restore()
        #expect(HostEnvironment.read(quotaFile) == original)

        let off = try rounds(busy, ["migration.incremental.memory": "false"])
        #expect(off.rounds.isEmpty)
        let one = try rounds(busy, ["migration.incremental.memory": "true", "migration.incremental.memory.iterations": "1"])
        #expect(one.rounds.count == 1, "\(one.decisions)")
        let exhaustive = try rounds(busy, ["migration.incremental.memory": "true", "migration.incremental.memory.goal": "100",
                                           "migration.incremental.memory.iterations": "3"])
        // goal 100 stops only at the limit or when nothing is dirty (a writer starved of CPU
        // on a loaded machine may write nothing between two rounds).
        #expect(exhaustive.rounds.count == 3 || (exhaustive.rounds.count >= 2 && exhaustive.rounds.last?.dirtyPages == 0),
                "busy writer + goal 100: up to the limit: \(exhaustive.decisions)")
        let settles = try rounds(idle, ["migration.incremental.memory": "true", "migration.incremental.memory.goal": "100",
                                        "migration.incremental.memory.iterations": "10"])
        #expect(settles.rounds.count < 10 && settles.rounds.last?.dirtyPages == 0,
                "idle writer + goal 100: rounds until nothing is dirty: \(settles.decisions)")
        let lxdDefault = try rounds(busy, ["migration.incremental.memory": "true"])
        #expect(lxdDefault.rounds.count == 2, "goal 70 %: the second round already has > 70 % unchanged: \(lxdDefault.decisions)")
    }

    /// A failure after the lazy dump (the destination's restore can't find the rootfs)
    /// rolls back: the source runs on, healthy, and nothing is left on the destination.
    @Test func failedRestoreLeavesTheSourceRunning() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("fail", writer: ["16", "16", "8", "4000", "0"]))
        let rootfs = container.rootfs.path
        #expect(eventually(10) { MigrationLab.counter(rootfs: rootfs, nsPID: 1) >= 3 })
        let (move, _) = try await move(lab: lab, container: container, kind: .uffdWP, goal: 70, rounds: 2,
                                       destinationImage: lab.directory + "/no-such-image")
        lab.expectRolledBack(container, move)
    }
}

/// Any criu process still running (ours would be the only ones on a test host).
func criuRunning() -> Bool {
    let procs = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return procs.contains { name in
        guard Int(name) != nil else { return false }
        return (HostEnvironment.read("/proc/\(name)/comm") ?? "") == "criu"
    }
}

/// Polls every 50 ms; true once `condition` holds.
func eventually(_ timeout: TimeInterval = 5, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if try condition() { return true }
        usleep(50_000)
    } while Date() < deadline
    return false
}
