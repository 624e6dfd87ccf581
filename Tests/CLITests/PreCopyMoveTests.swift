import API
import Foundation
import GodwitCore
import Testing

/// `godwit move --mode pre-copy | hybrid` between two real lab hosts: pre-copy rounds with
/// the container's dirty tracker through the "precopy" channel, the final phase fetching
/// only what the destination's page store lacks, hybrid's lazy restore served from that
/// store. Memory (memtouch, 128 MiB, stride 4) verifies after every move; no wall-clock
/// assertions.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct PreCopyMoveTests {
    typealias Workload = MoveTests.Workload

    func move(_ lab: MoveLab, _ name: String, from: String, to: String, mode: String) throws -> MoveReport {
        let result = try lab.on(from, ["move"], [name, "\(to):", "--mode", mode, "--format", "json"])
        try #require(result.succeeded, "move \(from) -> \(to) (\(mode)) failed: \(result.stderr)")
        let report = try APICoding.decoder().decode(MoveReport.self, from: Data(result.stdout.utf8))
        print("move \(name) \(from) -> \(to) \(report.mode.rawValue): \(report.outcome), frozen \(report.frozenMillis ?? -1) ms, total \(report.totalMillis) ms, all local \(report.allLocalMillis ?? -1) ms; \(report.modeReason)")
        if let rounds = report.rounds { for r in rounds { print("    round \(r.round): \(r.decision)") } }
        if let m = report.memory { print("    memory: \(m)") }
        return report
    }

    func set(_ lab: MoveLab, _ host: String, _ name: String, _ keys: [String: String]) throws {
        for (key, value) in keys.sorted(by: { $0.key < $1.key }) {
            let result = try lab.on(host, ["config", "set"], [name, key, value])
            try #require(result.succeeded, "config set \(key) \(value): \(result.stderr)")
        }
    }

    /// The source's copy is gone and the destination's runs.
    func expectMoved(_ lab: MoveLab, _ name: String, from: String, to: String, _ report: MoveReport,
                     sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(report.outcome == "moved", sourceLocation: sourceLocation)
        #expect(try lab.container(from, name) == nil, "\(name) is still listed on \(from)", sourceLocation: sourceLocation)
        #expect(try lab.container(to, name)?.status == .running, sourceLocation: sourceLocation)
        #expect(lab.processes(from, name).isEmpty, "processes left on \(from)", sourceLocation: sourceLocation)
        #expect(lab.mounts(from, name).isEmpty, "mounts left on \(from)", sourceLocation: sourceLocation)
    }

    @Test func preCopyRoundsFollowTheKeysAndOnlyChangedPagesAreSentAgain() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try Workload(lab: lab, name: "pc", host: "h1", memoryMiB: 128)
        defer { workload.stop() }

        // goal=100: rounds until nothing is dirty or the limit (memtouch never stops writing).
        try set(lab, "h1", "pc", ["migration.incremental.memory.goal": "100", "migration.incremental.memory.iterations": "3"])
        var report = try move(lab, "pc", from: "h1", to: "h2", mode: "pre-copy")
        try expectMoved(lab, "pc", from: "h1", to: "h2", report)
        #expect(report.mode == .preCopy)
        #expect(report.memory?.tracker == "uffd-wp", "this host has uffd-wp + PAGEMAP_SCAN")
        var rounds = try #require(report.rounds)
        #expect(rounds.count == 3 || (rounds.count < 3 && rounds.last?.dirtyPages == 0), "\(rounds.count) rounds for goal=100, iterations=3")
        #expect(rounds.first?.dataPages ?? 0 > 128 * 256 / 2, "round 1 sent \(rounds.first?.dataPages ?? 0) data pages")
        #expect(rounds.dropFirst().allSatisfy { $0.dirtyPagesPerSecond != nil && $0.predictedPauseMillis != nil })
        let memory = try #require(report.memory)
        let lazy = try #require(memory.lazyPages)
        let fromStore = try #require(memory.pagesFromStore)
        let fetched = try #require(memory.pagesFetched)
        #expect(fromStore > lazy / 2, "only \(fromStore) of \(lazy) lazy pages came from the page store")
        // The final dirty set travels behind the final scan; only pages no tracker saw
        // (none here) would be fetched through CRIU's page server.
        #expect(memory.pagesPushed == memory.finalDirtyPages, "pushed \(memory.pagesPushed ?? -1), final dirty \(memory.finalDirtyPages ?? -1)")
        #expect(fetched < lazy / 50, "\(fetched) of \(lazy) pages fetched again in the final phase")
        #expect(fromStore + fetched >= lazy, "every lazy page either came from the store or was fetched")
        try workload.expectHealthy(on: "h2")

        // iterations=1: exactly one round.
        try set(lab, "h2", "pc", ["migration.incremental.memory.iterations": "1"])
        report = try move(lab, "pc", from: "h2", to: "h1", mode: "pre-copy")
        try expectMoved(lab, "pc", from: "h2", to: "h1", report)
        rounds = try #require(report.rounds)
        #expect(rounds.count == 1)
        #expect(rounds.first?.decision.contains("iterations=1") == true, "\(rounds.first?.decision ?? "")")
        try workload.expectHealthy(on: "h1")

        // The hashing tracker, forced by a key; default goal and iterations.
        try set(lab, "h1", "pc", ["migration.incremental.memory.tracker": "hashing",
                                  "migration.incremental.memory.goal": "70", "migration.incremental.memory.iterations": "10"])
        report = try move(lab, "pc", from: "h1", to: "h2", mode: "pre-copy")
        try expectMoved(lab, "pc", from: "h1", to: "h2", report)
        #expect(report.memory?.tracker == "hashing")
        rounds = try #require(report.rounds)
        #expect(rounds.count >= 2, "round 1 always asks for another round unless iterations=1")
        #expect((report.memory?.pagesFromStore ?? 0) > 0)
        try workload.expectHealthy(on: "h2")
    }

    @Test func autoPicksHybridForALargeIncrementalContainerAndServesPagesLocally() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try Workload(lab: lab, name: "hy", host: "h1", memoryMiB: 128)
        defer { workload.stop() }
        try set(lab, "h1", "hy", ["migration.incremental.memory": "true", "migration.postcopy": "true"])
        var report = try move(lab, "hy", from: "h1", to: "h2", mode: "auto")
        try expectMoved(lab, "hy", from: "h1", to: "h2", report)
        #expect(report.mode == .hybrid)
        #expect(report.modeReason.contains("auto") && report.modeReason.contains("MiB"), "\(report.modeReason)")
        func expectServedLocally(_ report: MoveReport, sourceLocation: SourceLocation = #_sourceLocation) throws {
            let m = try #require(report.memory, sourceLocation: sourceLocation)
            let lazy = try #require(m.lazyPages, sourceLocation: sourceLocation)
            let local = try #require(m.pagesServedLocally, sourceLocation: sourceLocation)
            #expect(m.tracker == "uffd-wp", sourceLocation: sourceLocation)
            #expect(local > lazy / 2, "only \(local) of \(lazy) lazy pages served locally", sourceLocation: sourceLocation)
            #expect(m.pagesFetchedTwice == 0, "pages fetched twice: \(m.pagesFetchedTwice ?? -1)", sourceLocation: sourceLocation)
            #expect((m.pagesFetchedOnFault ?? 0) < lazy / 2, "\(m.pagesFetchedOnFault ?? 0) pages fetched on fault", sourceLocation: sourceLocation)
            #expect(report.allLocalMillis != nil, sourceLocation: sourceLocation)
            #expect((report.rounds ?? []).count >= 1, sourceLocation: sourceLocation)
        }
        try expectServedLocally(report)
        try workload.expectHealthy(on: "h2")

        report = try move(lab, "hy", from: "h2", to: "h1", mode: "hybrid")
        try expectMoved(lab, "hy", from: "h2", to: "h1", report)
        try expectServedLocally(report)
        try workload.expectHealthy(on: "h1")

        // migration.postcopy=false forbids hybrid (and post-copy); auto falls back to pre-copy.
        try set(lab, "h1", "hy", ["migration.postcopy": "false"])
        let refused = try lab.on("h1", ["move"], ["hy", "h2:", "--mode", "hybrid"])
        #expect(!refused.succeeded)
        #expect(refused.stderr.contains("migration.postcopy=false"), "\(refused.stderr)")
        #expect(try lab.container("h1", "hy")?.status == .running)
        report = try move(lab, "hy", from: "h1", to: "h2", mode: "auto")
        try expectMoved(lab, "hy", from: "h1", to: "h2", report)
        #expect(report.mode == .preCopy, "\(report.modeReason)")
        try workload.expectHealthy(on: "h2")
    }

    /// The link to the destination goes down right after the destination runs (a slow link
    /// and one round leave a large final dirty set to fetch): whatever the outcome, there is
    /// never a second running copy on the source.
    @Test func cuttingTheLinkAfterTheDestinationRunsNeverLeavesTwoCopies() throws {
        let lab = try MoveLab(bandwidth: "100mbit")
        defer { lab.tearDown() }
        #expect(try lab.on("h1", ["launch"], ["busybox", "cut"]).succeeded)
        _ = try lab.sh("h1", "cut", "memtouch --size 128 --stride 4 --report /tmp/mt.json </dev/null >/dev/null 2>&1 &")
        try #require(waitUntil {
            let text = (try? lab.sh("h1", "cut", "cat /tmp/mt.json").stdout) ?? ""
            return (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])?["ready"] as? Bool == true
        }, "memtouch never got ready")
        try set(lab, "h1", "cut", ["migration.incremental.memory.iterations": "1"])

        let mover = Process()
        mover.executableURL = URL(fileURLWithPath: LabCLITests.godwit)
        mover.arguments = ["move", "--dir", "\(lab.name)/h1", "cut", "h2:", "--mode", "hybrid", "--format", "json"]
        mover.environment = lab.environment
        let out = Pipe()
        mover.standardOutput = out
        mover.standardError = FileHandle.nullDevice
        try mover.run()
        var cut = false
        var twoCopies = false
        let deadline = Date().addingTimeInterval(300)
        while mover.isRunning, Date() < deadline {
            if !lab.processes("h1", "cut").isEmpty, !lab.processes("h2", "cut").isEmpty,
               lab.processes("h1", "cut").contains(where: { !Self.stoppedOrDoomed($0) }),
               lab.processes("h2", "cut").contains(where: { !Self.stoppedOrDoomed($0) }) {
                twoCopies = true
            }
            if !cut, (try? lab.container("h2", "cut"))??.status == .running {
                _ = try Command.run(["nsenter", "--net=/run/netns/godwit-\(lab.name)-fabric", "ip", "link", "set", "h2", "down"])
                cut = true
            }
            usleep(20_000)
        }
        if mover.isRunning { kill(mover.processIdentifier, SIGKILL) }
        mover.waitUntilExit()
        let output = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(cut, "the destination never ran")
        #expect(!twoCopies, "both hosts ran the container at once")
        // The source never resumes after the commit: whatever is left on h1 is frozen or doomed.
        let left = lab.processes("h1", "cut").filter { !Self.stoppedOrDoomed($0) }
        #expect(left.isEmpty, "the source copy runs again: \(left)")
        if let report = try? APICoding.decoder().decode(MoveReport.self, from: Data(output.utf8)) {
            #expect(report.outcome == "moved", "a finished move must have moved: \(report.outcome)")
        }
        _ = try? Command.run(["nsenter", "--net=/run/netns/godwit-\(lab.name)-fabric", "ip", "link", "set", "h2", "up"])
    }

    /// A task that can't run: stopped (SIGSTOP, ptrace, frozen) or with SIGKILL pending.
    static func stoppedOrDoomed(_ pid: pid_t) -> Bool {
        guard let status = HostEnvironment.read("/proc/\(pid)/status") else { return true }
        for line in status.split(separator: "\n") {
            if line.hasPrefix("State:"), line.contains("T") || line.contains("t") || line.contains("Z") || line.contains("X") { return true }
            if line.hasPrefix("ShdPnd:") || line.hasPrefix("SigPnd:"),
               let mask = UInt64(line.split(separator: "\t").last ?? "", radix: 16), mask & (1 << 8) != 0 { return true }
        }
        // Frozen by the cgroup freezer: sleeping in the refrigerator.
        if let wchan = HostEnvironment.read("/proc/\(pid)/wchan"), wchan.contains("refrigerator") || wchan.contains("freezer") { return true }
        return false
    }
}
