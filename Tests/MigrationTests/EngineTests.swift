import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Runtime
import Testing

/// The shipping engine's two state machines, driven through a loopback peer with real
/// containers and CRIU: every strategy, a rollback from every state, and the order that
/// never leaves two copies.
@Suite(.serialized)
struct EngineTests {
    static let keys = ["migration.incremental.memory.goal": "100", "migration.incremental.memory.iterations": "2",
                       "migration.incremental.memory.autoconverge": "false", "migration.incremental.memory.tracker": "uffd-wp"]

    /// At the destination's commit: every source task is doomed, and every restored task is
    /// still stopped. Recorded by the loopback peer's hook, checked after the move.
    final class CommitOrder: @unchecked Sendable {
        private let lock = NSLock()
        private var seen: (sourceDoomed: Bool, destinationStopped: Bool, sourceTasks: Int)?
        var observation: (sourceDoomed: Bool, destinationStopped: Bool, sourceTasks: Int)? { lock.withLock { seen } }

        func record(source: Cgroup, destination: Cgroup) {
            let sourcePIDs = ContainerProcesses.hostPIDs(cgroupDirectories: source.directories)
            let doomed = sourcePIDs.allSatisfy { SourceTermination.isDoomed($0) }
            let restored = ContainerProcesses.hostPIDs(cgroupDirectories: destination.directories)
            // Held: stopped by CRIU (--leave-stopped), or in a frozen cgroup (CRIU restores
            // the freezer state the dump found, FROZEN once the source freezes before CRIU).
            let stopped = !restored.isEmpty && (destination.isFrozen || restored.allSatisfy { pid in
                let state = HostEnvironment.read("/proc/\(pid)/stat")?.split(separator: ")").last?.split(separator: " ").first
                return state == "T" || state == "t"
            })
            lock.withLock { seen = (doomed, stopped, sourcePIDs.count) }
        }
    }

    @Test(arguments: MigrationStrategy.allCases)
    func everyStrategyMovesAndNeverRunsTwoCopies(_ strategy: MigrationStrategy) async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let tag = "all" + String(strategy.rawValue.prefix(4))
        let container = try lab.start(try lab.spec(tag, writer: ["32", "64", "16", "4000", "1"]))
        #expect(eventually(10) { MigrationLab.processes(of: container.cgroup).count == 2 })
        MigrationLab.waitUntilWriting(container)
        let order = CommitOrder()
        let dst = lab.destinationCgroup(for: container)
        // While CRIU holds the container, nothing on the host can reach its page server.
        let listeners = Locked<Int?>(nil)
        var hooks = SourceHooks()
        let images = lab.imagesRoot + "/src-" + tag
        hooks.onReach = { point in
            if point == .frozen { listeners.value = criuListeningSockets(imagesDirectory: images) }
        }
        let move = try await lab.engineMove(container, strategy: strategy, tag: tag, config: Self.keys, hooks: hooks) { peer in
            peer.beforeDestinationCommit = { order.record(source: container.cgroup, destination: dst) }
        }
        let report = try move.result.get()
        #expect(report.mode == strategy && report.outcome == "moved")
        #expect(listeners.value == 0, "CRIU's page server listened on \(listeners.value ?? -1) socket(s)")
        #expect(move.stateName == "moved")
        let seen = try #require(order.observation, "the destination was asked to commit")
        #expect(move.doomedTasks == 2)
        #expect(seen.sourceDoomed, "the source's tasks were doomed before the destination ran (\(seen.sourceTasks) left)")
        #expect(seen.destinationStopped, "the restored tasks waited, stopped, for the commit")
        #expect(move.peer.reports.count == 1, "the destination got the final report")
        #expect(move.destination.journaled == [.restored, .committing, nil],
                "journaled once restored, again before the tasks ran, removed at the end")
        // After the commit the destination holds the only copy: an abort is refused, a
        // repeated commit answers with the status.
        let engine = try #require(move.engine)
        #expect(await engine.abort(reason: "late abort") == false)
        #expect(try engine.commitIdempotent().phase == "done")
        #expect(engine.stateName == "done")
        // Progress: every phase reported; pre-copy rounds with their round and dirty set.
        #expect(move.progress.contains { $0.hasPrefix("filesystem sync") })
        #expect(move.progress.contains { $0.hasPrefix("checkpoint") })
        if strategy.preCopies {
            #expect(move.progress.contains { $0.hasPrefix("pre-copy round 1/2: ") && $0.contains("dirty pages sent") })
            #expect(move.progress.contains { $0.hasPrefix("pre-copy round 2/2: ") && $0.contains("dirty rate") })
        }
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        // The restored writers keep their counters in the destination's own rootfs.
        let dstRoot = move.destination.rootfs.path
        let restored = MigrationLab.processes(of: dst)
        #expect(restored.count == 2)
        let before = restored.map { MigrationLab.counter(rootfs: dstRoot, nsPID: $0.nsPID) }
        #expect(eventually(10) { zip(restored, before).allSatisfy { MigrationLab.counter(rootfs: dstRoot, nsPID: $0.0.nsPID) > $0.1 + 2 } },
                "the counters continue on the destination")
        let verdicts = MigrationLab.verify(cgroup: dst, rootfs: dstRoot)
        #expect(verdicts.count == 2 && verdicts.values.allSatisfy { $0.hasPrefix("ok") }, "\(verdicts)")
    }

    /// A failure in each state of the source rolls back: the destination's copy goes, the
    /// source runs on (thawed, network unlocked), nothing of CRIU is left.
    @Test(arguments: zip(SourceHooks.Point.allCases, [MigrationStrategy.stopAndCopy, .preCopy, .postCopy, .hybrid]))
    func failureInEveryStateRollsBack(_ point: SourceHooks.Point, _ strategy: MigrationStrategy) async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let tag = "rb" + String(point.rawValue.prefix(5))
        let container = try lab.start(try lab.spec(tag, writer: ["16", "16", "8", "4000", "0"]))
        MigrationLab.waitUntilWriting(container)
        let reached = Lines()
        var hooks = SourceHooks(failAt: point)
        hooks.onReach = { p in reached.append(p.rawValue) }
        let move = try await lab.engineMove(container, strategy: strategy, tag: tag, config: Self.keys, hooks: hooks)
        let failed = try #require(move.failureReport)
        #expect(failed.reason?.contains("injected failure at \(point.rawValue)") == true)
        #expect(move.stateName == "rolled back")
        #expect(reached.all.last == point.rawValue)
        lab.expectRolledBack(container, move)
    }

    /// Past the point of no return one lost request or answer must not lose the container,
    /// nor may cancelling the move: the commit is asked again and confirmed by a status query.
    @Test(arguments: [MigrationStrategy.stopAndCopy, .postCopy])
    func aLostCommitOrACancelAtTheCommitStillMoves(_ strategy: MigrationStrategy) async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let tag = "lc" + String(strategy.rawValue.prefix(4))
        let container = try lab.start(try lab.spec(tag, writer: ["16", "32", "8", "4000", "0"]))
        MigrationLab.waitUntilWriting(container)
        let cancelled = Locked(false)
        let moving = Locked<Task<EngineMove, Error>?>(nil)
        let handed = HandOff((lab, container))
        let task = Task {
            let (lab, container) = handed.value
            return try await lab.engineMove(container, strategy: strategy, tag: tag) { peer in
                peer.commitFaults = [.lostRequest, .lostAnswer]
                peer.onCommitRequest = {
                    // The user gives up on the move just as the source asks for the commit.
                    moving.withLock { $0 }?.cancel()
                    cancelled.value = true
                }
            }
        }
        moving.withLock { $0 = task }
        let move = try await task.value
        #expect(cancelled.value, "the move was cancelled at the commit")
        let report = try move.result.get()
        #expect(report.outcome == "moved", "\(move.failureReport?.reason ?? "")")
        #expect(move.engine?.stateName == "done")
        let dst = lab.destinationCgroup(for: container)
        let dstRoot = move.destination.rootfs.path
        let restored = MigrationLab.processes(of: dst)
        #expect(restored.count == 1)
        let at = MigrationLab.counter(rootfs: dstRoot, nsPID: 1)
        #expect(eventually(10) { MigrationLab.counter(rootfs: dstRoot, nsPID: 1) > at + 2 }, "it runs on the destination")
        #expect(eventually(10) { !container.initProcess.isAlive }, "and only there")
    }

    /// The destination fails its restore: the source rolls back.
    @Test func destinationRestoreFailureRollsBack() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("dfail", writer: ["16", "16", "8", "4000", "0"]))
        MigrationLab.waitUntilWriting(container)
        let move = try await lab.engineMove(container, strategy: .stopAndCopy, tag: "dfail") { peer in peer.failRestore = true }
        #expect(move.failureReport?.failedPhase == "memory + restore")
        lab.expectRolledBack(container, move)
    }
}

/// The revert list undoes newest first, once, and not at all once disarmed.
@Suite struct RevertListTests {
    final class Log: @unchecked Sendable {
        let lock = NSLock()
        var steps: [String] = []
        func add(_ s: String) { lock.withLock { steps.append(s) } }
    }

    @Test func undoesNewestFirstOnce() async {
        let log = Log()
        var revert = RevertList()
        revert.add("a") { log.add("a") }
        revert.add("b") { log.add("b") }
        revert.add("c") { log.add("c") }
        #expect(revert.pending == ["c", "b", "a"])
        await revert.run()
        await revert.run()
        #expect(log.steps == ["c", "b", "a"])
    }

    @Test func disarmedUndoesNothing() async {
        let log = Log()
        var revert = RevertList()
        revert.add("a") { log.add("a") }
        revert.disarm()
        await revert.run()
        #expect(log.steps.isEmpty && revert.pending.isEmpty)
    }
}

/// The one strategy type: parsing, wire form, and what each behaviour says.
@Suite struct StrategyTests {
    @Test func behavioursDifferOnlyWhereTheyShould() {
        let table = MigrationStrategy.allCases.map { s in (s, s.behaviour.roundsWhileRunning, s.behaviour.finalDirtySet, s.behaviour.restore) }
        #expect(table.map(\.1) == [false, true, false, true])
        #expect(table.map(\.2) == [.none, .inline, .none, .pushed])
        #expect(table.map(\.3) == [.copy, .localLazy, .lazy, .lazy])
        #expect(MigrationStrategy.allCases.allSatisfy { $0.behaviour.strategy == $0 })
    }

    @Test func modeTextAndWire() throws {
        #expect(try MigrationStrategy.parse(mode: "auto") == nil)
        #expect(try MigrationStrategy.parse(mode: "hybrid") == .hybrid)
        #expect(throws: GodwitError.self) { try MigrationStrategy.parse(mode: "fast") }
        let auto = try APICoding.encoder().encode(MoveRequest(target: "h2"))
        #expect(String(decoding: auto, as: UTF8.self).contains("\"mode\":\"auto\""))
        let back = try APICoding.decoder().decode(MoveRequest.self, from: Data(#"{"target":"h2","mode":"pre-copy"}"#.utf8))
        #expect(back.mode == .preCopy)
        #expect(throws: DecodingError.self) {
            try APICoding.decoder().decode(MoveRequest.self, from: Data(#"{"target":"h2","mode":"warp"}"#.utf8))
        }
    }

    @Test func plannerPicksWhatBothHostsSupport() throws {
        func caps(_ host: String, _ offered: [MigrationStrategy], version: String? = "4.2.1") -> PeerCapabilities {
            PeerCapabilities(host: host, criuVersion: version, strategies: MigrationStrategy.allCases.map {
                StrategyOffer(strategy: $0.rawValue, asSource: offered.contains($0), asDestination: offered.contains($0),
                              reason: offered.contains($0) ? nil : "not here")
            })
        }
        let all = MigrationStrategy.allCases
        let optedIn = ["migration.incremental.memory": "true", "migration.postcopy": "true"]
        let big = MovePlanner.Container(memoryBytes: 1 << 30, config: try ContainerConfig(validating: optedIn))
        let small = MovePlanner.Container(memoryBytes: 1 << 20, config: try ContainerConfig(validating: optedIn))
        #expect(try MovePlanner.plan(requested: nil, source: caps("a", all), destination: caps("b", all), container: big).mode == .hybrid)
        #expect(try MovePlanner.plan(requested: nil, source: caps("a", all), destination: caps("b", all), container: small).mode == .postCopy)
        // Safe by default: without the opt-in auto never picks a mode that can lose the container.
        let cautious = MovePlanner.Container(memoryBytes: 1 << 30, config: try ContainerConfig(validating: ["migration.incremental.memory": "true"]))
        let safe = try MovePlanner.plan(requested: nil, source: caps("a", all), destination: caps("b", all), container: cautious)
        #expect(safe.mode == .preCopy && safe.reason.contains("migration.postcopy=true"), "\(safe.reason)")
        let plain = MovePlanner.Container(memoryBytes: 1 << 20, config: ContainerConfig())
        #expect(try MovePlanner.plan(requested: nil, source: caps("a", all), destination: caps("b", all), container: plain).mode == .stopAndCopy)
        // Asking for post-copy is opting in; migration.postcopy=false still forbids it.
        #expect(try MovePlanner.plan(requested: .postCopy, source: caps("a", all), destination: caps("b", all), container: plain).mode == .postCopy)
        let forbidden = MovePlanner.Container(memoryBytes: 1 << 20, config: try ContainerConfig(validating: ["migration.postcopy": "false"]))
        #expect(throws: GodwitError.self) {
            try MovePlanner.plan(requested: .postCopy, source: caps("a", all), destination: caps("b", all), container: forbidden)
        }
        #expect(try MovePlanner.plan(requested: nil, source: caps("a", all), destination: caps("b", [.stopAndCopy, .preCopy]),
                                     container: big).mode == .preCopy)
        #expect(try MovePlanner.plan(requested: .stopAndCopy, source: caps("a", all), destination: caps("b", all), container: big).mode == .stopAndCopy)
        #expect(throws: GodwitError.self) {
            try MovePlanner.plan(requested: .hybrid, source: caps("a", all), destination: caps("b", [.stopAndCopy]), container: big)
        }
        #expect(throws: GodwitError.self) {
            try MovePlanner.plan(requested: nil, source: caps("a", all), destination: caps("b", all, version: "4.1.1"), container: big)
        }
    }

    /// An unprivileged container's lazy restore needs vm.unprivileged_userfaultfd=1 on the
    /// destination: with 0 only stop-and-copy is left, and the reason names the sysctl.
    @Test func plannerKeepsUnprivilegedContainersOffLazyRestoresWithoutTheSysctl() throws {
        func caps(_ host: String, lazy: Bool?) -> PeerCapabilities {
            PeerCapabilities(host: host, criuVersion: "4.2.1", strategies: MigrationStrategy.allCases.map {
                StrategyOffer(strategy: $0.rawValue, asSource: true, asDestination: true, reason: nil)
            }, unprivilegedLazyRestore: lazy)
        }
        let keys = ["migration.incremental.memory": "true", "migration.postcopy": "true"]
        let unprivileged = MovePlanner.Container(memoryBytes: 1 << 30, config: ContainerConfig(keys.merging(["volatile.idmap.base": "1065536"]) { a, _ in a }))
        let privileged = MovePlanner.Container(memoryBytes: 1 << 30, config: ContainerConfig(keys))
        for mode in [MigrationStrategy.preCopy, .postCopy, .hybrid] {
            let error = #expect(throws: GodwitError.self) {
                try MovePlanner.plan(requested: mode, source: caps("a", lazy: true), destination: caps("b", lazy: false), container: unprivileged)
            }
            #expect(error?.message.contains("b has vm.unprivileged_userfaultfd=0") == true, "\(mode): \(error?.message ?? "")")
            #expect(try MovePlanner.plan(requested: mode, source: caps("a", lazy: false), destination: caps("b", lazy: true), container: unprivileged).mode == mode)
            #expect(try MovePlanner.plan(requested: mode, source: caps("a", lazy: true), destination: caps("b", lazy: false), container: privileged).mode == mode)
            // An older destination doesn't say: it is not held against it.
            #expect(try MovePlanner.plan(requested: mode, source: caps("a", lazy: true), destination: caps("b", lazy: nil), container: unprivileged).mode == mode)
        }
        let auto = try MovePlanner.plan(requested: nil, source: caps("a", lazy: true), destination: caps("b", lazy: false), container: unprivileged)
        #expect(auto.mode == .stopAndCopy && auto.reason.contains("vm.unprivileged_userfaultfd=0"), "\(auto.reason)")
        #expect(try MovePlanner.plan(requested: .stopAndCopy, source: caps("a", lazy: true), destination: caps("b", lazy: false), container: unprivileged).mode == .stopAndCopy)
    }
}

/// Progress lines as a user sees them.
@Suite struct ProgressTests {
    @Test func roundLineCarriesRoundDirtySetRateAndPause() {
        var p = MoveProgress(phase: "pre-copy", bytesDone: 3 << 20, bytesExpected: 16 << 20)
        p.bytesPerSecond = 100 * 1048576
        p.etaSeconds = 0.13
        p.round = RoundProgress(round: 2, maxRounds: 10, pagesSent: 812, dirtyPages: 4096, dirtyPagesPerSecond: 1200, predictedPauseMillis: 140)
        let text = p.text
        #expect(text.hasPrefix("pre-copy round 2/10: 812 of 4096 dirty pages sent ("), "\(text)")
        #expect(text.contains("/s") && text.contains("0.1 s left") && text.contains("dirty rate 1200 pages/s")
                && text.contains("predicted pause 140 ms"), "\(text)")
    }

    @Test func eachRoundMeasuresItsOwnRate() throws {
        let seen = Locked<[MoveProgress]>([])
        let reporter = ProgressReporter(interval: .zero) { p in seen.withLock { $0.append(p) } }
        reporter.begin("pre-copy")
        reporter.advance(0, round: RoundProgress(round: 1, maxRounds: 2, pagesSent: 0, dirtyPages: 16384), force: true)
        usleep(150_000)
        reporter.advance(64 << 20, round: RoundProgress(round: 1, maxRounds: 2, pagesSent: 16384, dirtyPages: 16384), force: true)
        #expect(seen.value.last?.bytesPerSecond != nil, "round 1 measured from its start")
        reporter.advance(4096, round: RoundProgress(round: 2, maxRounds: 2, pagesSent: 1, dirtyPages: 100), force: true)
        let first = try #require(seen.value.last)
        #expect(first.bytesPerSecond == nil && first.etaSeconds == nil, "round 2's rate starts from round 2, not from round 1's start")
        #expect(first.headline == "pre-copy round 2/2: 1 of 100 dirty pages sent", "\(first.headline)")
    }

    @Test func aNoteIsShownThenGivesWay() {
        let seen = Lines()
        let reporter = ProgressReporter(interval: .zero) { seen.append($0.text) }
        reporter.begin("pre-copy")
        reporter.note("round 1: first full copy → next round")
        #expect(seen.all.last == "pre-copy: round 1: first full copy → next round")
        reporter.advance(4096, round: RoundProgress(round: 2, maxRounds: 2, pagesSent: 1, dirtyPages: 100), force: true)
        #expect(seen.all.last?.hasSuffix("; round 1: first full copy → next round") == true, "kept for a moment")
    }

    @Test func reporterComputesRateAndETA() throws {
        let seen = Lines()
        let reporter = ProgressReporter(interval: .zero) { seen.append($0.text) }
        reporter.begin("images", expected: 1000)
        usleep(100_000)
        reporter.advance(500, force: true)
        let last = try #require(seen.all.last)
        #expect(last.hasPrefix("images: 500 B of 1000 B at "), "\(last)")
        #expect(last.contains("s left"), "\(last)")
    }
}
