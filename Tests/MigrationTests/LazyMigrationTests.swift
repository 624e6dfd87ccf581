import Checkpoint
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Runtime
import Testing

/// An upstream that delays every reply: keeps a post-copy session long enough to cut it
/// while pages are still outstanding (no timing is asserted).
final class SlowUpstream: LazyPageUpstream {
    let inner: LazyPageUpstream
    let delayMicros: UInt32
    init(_ inner: LazyPageUpstream, delayMicros: UInt32) { self.inner = inner; self.delayMicros = delayMicros }
    func send(_ bytes: UnsafeRawBufferPointer) throws { try inner.send(bytes) }
    func receive(_ buffer: UnsafeMutableRawBufferPointer) throws {
        if buffer.count == 32 { usleep(delayMicros) }
        try inner.receive(buffer)
    }
    func finish() { inner.finish() }
    func abort() { inner.abort() }
}

/// Real containers, real CRIU 4.2.1: post-copy and hybrid moves through the page proxy.
@Suite(.serialized)
struct LazyMigrationTests {
    func migration(lab: MigrationLab, container: RunningContainer, mode: LazyMode, tracker: DirtyTracker,
                   store: PageStore, tag: String, rootfsOverride: String? = nil) throws -> LazyMigration {
        let veth = try #require(container.veth)
        let dstImages = lab.imagesRoot + "/dst-\(tag)"
        var restore = RestoreOptions(imagesDirectory: dstImages, rootfs: rootfsOverride ?? container.rootfs.path,
                                     pidFile: lab.directory + "/restored-\(tag).pid")
        restore.veths = [VethMapping(containerInterface: "eth0", hostInterface: veth.hostName, bridge: lab.bridge)]
        let dstCgroup = lab.destinationCgroup(for: container)
        restore.cgroupRoot = "/" + dstCgroup.path
        return LazyMigration(
            mode: mode,
            source: FinalPhaseSource(cgroup: container.cgroup, initPID: container.initPID, tracker: tracker,
                                     criu: try lab.criu(in: nil), imagesDirectory: lab.imagesRoot + "/src-\(tag)"),
            destination: LazyDestination(store: store, criu: try lab.criu(in: lab.destinationNetns),
                                         lazyPagesCRIU: try lab.criu(in: nil), restore: restore, cgroup: dstCgroup),
            progress: { print($0) })
    }

    func waitRunning(_ lab: MigrationLab, _ container: RunningContainer, processes: Int = 1) {
        let rootfs = container.rootfs.path
        _ = eventually(10) { MigrationLab.processes(of: container.cgroup).count == processes }
        _ = eventually(10) { MigrationLab.processes(of: container.cgroup).allSatisfy { MigrationLab.counter(rootfs: rootfs, nsPID: $0.nsPID) >= 3 } }
    }

    /// The restored writers run on and verify every page (after all pages are local).
    func expectHealthyDestination(_ lab: MigrationLab, _ container: RunningContainer, processes: Int) -> [pid_t: String] {
        let rootfs = container.rootfs.path
        let dst = lab.destinationCgroup(for: container)
        let restored = MigrationLab.processes(of: dst)
        #expect(restored.count == processes)
        let before = restored.map { MigrationLab.counter(rootfs: rootfs, nsPID: $0.nsPID) }
        #expect(eventually(10) { zip(restored, before).allSatisfy { MigrationLab.counter(rootfs: rootfs, nsPID: $0.0.nsPID) > $0.1 + 2 } },
                "the counter continues on the destination")
        let verdicts = MigrationLab.verify(cgroup: dst, rootfs: rootfs)
        #expect(verdicts.count == processes && verdicts.values.allSatisfy { $0.hasPrefix("ok") }, "\(verdicts)")
        return verdicts
    }

    func pauseSeen(_ verdicts: [pid_t: String]) -> Double {
        (verdicts.values.compactMap { $0.split(separator: " ").last.flatMap { Double($0) } }.max() ?? 0) / 1000
    }

    @Test func postCopyMoveVerifiesMemory() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("post", writer: ["64", "256", "16", "4000", "1"]))
        waitRunning(lab, container, processes: 2)
        let tracker = ContainerDirtyTracker.forCgroup(container.cgroup, kind: .uffdWP)
        let store = try lab.newStore()
        let move = try migration(lab: lab, container: container, mode: .postCopy, tracker: tracker, store: store, tag: "post")
        let report = try move.run()
        print(report)
        #expect(report.lost == nil)
        #expect(report.allLocalNanos != nil)
        #expect(report.proxy.pagesServedLocally == 0 && report.proxy.pagesFetched >= 2 * 16384, "post-copy fetches everything")
        #expect(report.proxy.pagesFetchedTwice == 0 && report.proxy.pagesRequestedTwice == 0)
        #expect(report.proxy.pagesFetched == report.lazyPages, "each lazy page fetched exactly once")
        #expect(report.killedSourceTasks == 2)
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        let verdicts = expectHealthyDestination(lab, container, processes: 2)
        print(String(format: "post-copy: application pause seen by the writers (max CLOCK_REALTIME gap): %.0f ms", pauseSeen(verdicts)))
    }

    @Test func hybridMoveServesLocallyAndFetchesOnlyTheDirtySet() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("hyb", writer: ["64", "256", "16", "4000", "1"]))
        waitRunning(lab, container, processes: 2)
        let tracker = ContainerDirtyTracker.forCgroup(container.cgroup, kind: .uffdWP)
        defer { tracker.close() }
        let store = try lab.newStore()
        var settings = ConvergenceSettings(goalPercent: 100, maxRounds: 3)
        settings.autoConverge = false
        let pre = try LocalPreCopy.run(tracker: tracker, store: store, settings: settings) { print($0) }
        let move = try migration(lab: lab, container: container, mode: .hybrid, tracker: tracker, store: store, tag: "hyb")
        let report = try move.run(round: pre.report.rounds.count + 1)
        print(report)
        let p = report.proxy
        #expect(report.lost == nil && report.allLocalNanos != nil)
        #expect(report.finalDirtyPages > 0, "the writers dirtied pages after the last round")
        #expect(p.pagesFetchedTwice == 0 && p.pagesRequestedTwice == 0, "nothing fetched or asked twice")
        #expect(p.pagesServedLocally + p.pagesFetched == p.pagesRequested)
        #expect(p.pagesRequested == report.lazyPages)
        // Consistency with the dirty set: at the freeze the store held every lazy page but
        // the final dirty set and pages never sent; all of those are served locally, and
        // only pages it lacked can have been fetched (the push makes that few).
        let lacked = report.lazyPages - report.lazyPagesInStoreAtFreeze
        #expect(p.pagesServedLocally >= report.lazyPagesInStoreAtFreeze, "every page unchanged since it was sent is served locally")
        #expect(p.pagesFetched <= lacked, "fetched ≤ final dirty set + pages never sent")
        #expect(lacked <= report.finalDirtyPages + 64, "the store lacked only the final dirty set (and a few pages never tracked)")
        #expect(p.pagesFetched < report.lazyPages / 10, "most pages were local")
        #expect(report.pagesPushed > 0)
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        let verdicts = expectHealthyDestination(lab, container, processes: 2)
        print(String(format: "hybrid: application pause seen by the writers (max CLOCK_REALTIME gap): %.0f ms", pauseSeen(verdicts)))
    }

    /// Cutting the connection to the source after the destination runs (post-copy, pages
    /// outstanding): the container is reported lost; the source tasks are dead and never
    /// ran again; the destination's tasks and lazy-pages daemon are gone.
    @Test func cutAfterTheDestinationRunsNeverLeavesTwoCopies() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("cut", writer: ["64", "64", "16", "4000", "0"]))
        waitRunning(lab, container)
        let rootfs = container.rootfs.path
        let tracker = ContainerDirtyTracker.forCgroup(container.cgroup, kind: .uffdWP)
        let store = try lab.newStore()
        let move = try migration(lab: lab, container: container, mode: .postCopy, tracker: tracker, store: store, tag: "cut")
        move.upstreamFactory = { a in try SlowUpstream(TCPPageServerUpstream(host: a.address, port: a.port), delayMicros: 20_000) }
        move.afterCommit = { proxy in usleep(100_000); proxy.cutUpstream() }
        move.allLocalTimeout = 60
        let report = try move.run()
        print(report)
        #expect(report.lost != nil, "pages were outstanding: the container is lost")
        #expect(report.killedSourceTasks == 1)
        #expect(eventually(15) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty },
                "the source tasks died (CRIU failed the dump and 'resumed' them into their pending SIGKILL)")
        let dst = lab.destinationCgroup(for: container)
        #expect(eventually(10) { MigrationLab.processes(of: dst).isEmpty }, "the half-restored destination was killed")
        // Nobody runs the writer any more: its counter stands still.
        let at = MigrationLab.counter(rootfs: rootfs, nsPID: 1)
        usleep(500_000)
        #expect(MigrationLab.counter(rootfs: rootfs, nsPID: 1) == at, "no copy of the container runs")
        let state = HostEnvironment.read((container.cgroup.directory(for: "freezer") ?? "") + "/freezer.state")
        print("source freezer after the cut: \(state ?? "gone")")
    }

    /// The documented other half of the rule: a cut after the destination runs loses the
    /// container only if it still needs a page from the source. In hybrid, once the push
    /// made every lazy page local, the cut costs nothing: the destination keeps running
    /// (CLOSE is answered locally), the source's dump fails and its doomed tasks die.
    @Test func hybridCutWhenEverythingIsLocalKeepsTheDestination() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("hcut", writer: ["32", "64", "16", "4000", "0"]))
        waitRunning(lab, container)
        let tracker = ContainerDirtyTracker.forCgroup(container.cgroup, kind: .uffdWP)
        defer { tracker.close() }
        let store = try lab.newStore()
        var settings = ConvergenceSettings(goalPercent: 100, maxRounds: 2)
        settings.autoConverge = false
        _ = try LocalPreCopy.run(tracker: tracker, store: store, settings: settings)
        let move = try migration(lab: lab, container: container, mode: .hybrid, tracker: tracker, store: store, tag: "hcut")
        move.afterCommit = { proxy in proxy.cutUpstream() }
        move.allLocalTimeout = 60
        let report = try move.run(round: 3)
        print(report)
        #expect(eventually(15) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty },
                "the source never comes back")
        let lacked = report.lazyPages - report.lazyPagesInStoreAtFreeze
        if report.pagesPushed >= lacked {
            #expect(report.lost == nil, "every page was local: the cut must not lose the container")
        }
        if report.lost == nil {
            #expect(report.proxy.pagesFetched == 0)
            _ = expectHealthyDestination(lab, container, processes: 1)
        } else {
            #expect(eventually(10) { MigrationLab.processes(of: lab.destinationCgroup(for: container)).isEmpty })
        }
    }

    /// A failure before the destination runs (restore can't find the rootfs): rolled back,
    /// the source runs on and verifies, nothing is left on the destination.
    @Test func failureBeforeTheDestinationRunsLeavesTheSourceRunning() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("lfail", writer: ["16", "16", "8", "4000", "0"]))
        waitRunning(lab, container)
        let rootfs = container.rootfs.path
        let tracker = ContainerDirtyTracker.forCgroup(container.cgroup, kind: .uffdWP)
        let store = try lab.newStore()
        let move = try migration(lab: lab, container: container, mode: .postCopy, tracker: tracker, store: store,
                                 tag: "lfail", rootfsOverride: lab.directory + "/no-such-rootfs")
        #expect(throws: GodwitError.self) { _ = try move.run() }
        #expect(container.initProcess.isAlive, "the source container survived")
        let at = MigrationLab.counter(rootfs: rootfs, nsPID: 1)
        #expect(eventually(10) { MigrationLab.counter(rootfs: rootfs, nsPID: 1) > at + 2 }, "the source runs on (thawed)")
        let verdicts = MigrationLab.verify(cgroup: container.cgroup, rootfs: rootfs)
        #expect(verdicts[1]?.hasPrefix("ok") == true, "\(verdicts)")
        let dst = lab.destinationCgroup(for: container)
        #expect(!FileManager.default.fileExists(atPath: lab.imagesRoot + "/dst-lfail"))
        #expect(MigrationLab.processes(of: dst).isEmpty && !dst.exists)
    }

    /// The mechanism behind never-two-copies: after SIGKILL to every frozen source task,
    /// CRIU's page server still serves every lazy page with the contents at the freeze
    /// (they sit in CRIU's pipes), and a failed session then cannot bring them back.
    @Test func pageServerServesAfterTheSourceTasksAreKilled() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("kill", writer: ["32", "32", "16", "4000", "0"]))
        waitRunning(lab, container)
        let rootfs = container.rootfs.path
        let images = lab.imagesRoot + "/src-kill"
        var options = DumpOptions(pid: container.initPID, imagesDirectory: images)
        options.freezerCgroup = container.cgroup.directory(for: "freezer")
        let port = try PageServerClient.freePort()
        options.lazyPages = PageServerAddress(address: "127.0.0.1", port: port)
        let dump = try LazyDump(criu: try lab.criu(in: nil), options: options)
        defer { if dump.isRunning { dump.kill() } }
        try dump.waitUntilServing()
        let atFreeze = try MemorySnapshot.take(cgroup: container.cgroup)
        let states = MigrationLab.processes(of: container.cgroup).map { HostEnvironment.read("/proc/\($0.hostPID)/stat")?.split(separator: " ")[2] ?? "?" }
        print("source task states while CRIU serves: \(states)")
        let killed = try SourceTermination.killAll(cgroup: container.cgroup)
        #expect(killed == 1)
        // Fetch every lazy page after the kill and compare with the freeze.
        let client = try PageServerClient(host: "127.0.0.1", port: port)
        var requests: [PageServerClient.Request] = []
        for (id, entries) in try ImageRebuilder(directory: images).lazyEntries() {
            for e in entries { requests.append(.init(nsPID: id, vaddr: e.vaddr, pages: e.pages)) }
        }
        var mismatches = 0, compared = 0
        try client.fetch(requests) { id, vaddr, pages, bytes in
            for i in 0..<pages {
                let page = UnsafeRawBufferPointer(rebasing: bytes[(i * 4096)..<((i + 1) * 4096)])
                if let expected = atFreeze.pages[id]?[vaddr + UInt64(i * 4096)] {
                    compared += 1
                    if PageHash.xxh3(page) != expected { mismatches += 1 }
                }
            }
        }
        print("compared \(compared) pages served after the kill, \(mismatches) differ; \(client.pagesFetched) fetched")
        #expect(compared >= 8192 && mismatches == 0)
        // Now fail the session (reset): CRIU "resumes" the source, which dies instead.
        client.abandon()
        #expect(dump.waitForExit(timeout: 30) != nil)
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        let at = MigrationLab.counter(rootfs: rootfs, nsPID: 1)
        usleep(300_000)
        #expect(MigrationLab.counter(rootfs: rootfs, nsPID: 1) == at, "the source never ran again")
    }

    /// Figures (GODWIT_BENCH=1): frozen time and time until all pages are local for a
    /// 256 MiB writer, post-copy vs hybrid vs the pre-copy FinalPhase.
    @Test(.enabled(if: ProcessInfo.processInfo.environment["GODWIT_BENCH"] != nil))
    func benchLazyModes() throws {
        for mode in ["post-copy", "hybrid", "final-phase"] {
            let lab = try MigrationLab()
            defer { lab.cleanUp() }
            let tag = mode.replacingOccurrences(of: "-", with: "")
            let container = try lab.start(try lab.spec("b" + String(tag.prefix(6)), writer: ["256", "256", "16", "4000", "0"]))
            waitRunning(lab, container)
            let tracker = ContainerDirtyTracker.forCgroup(container.cgroup, kind: .uffdWP)
            defer { tracker.close() }
            let store = try lab.newStore()
            var settings = ConvergenceSettings(goalPercent: 100, maxRounds: 3)
            settings.autoConverge = false
            if mode != "post-copy" { _ = try LocalPreCopy.run(tracker: tracker, store: store, settings: settings) }
            if mode == "final-phase" {
                let veth = try #require(container.veth)
                var restore = RestoreOptions(imagesDirectory: lab.imagesRoot + "/dst-fp", rootfs: container.rootfs.path,
                                             pidFile: lab.directory + "/restored-fp.pid")
                restore.veths = [VethMapping(containerInterface: "eth0", hostInterface: veth.hostName, bridge: lab.bridge)]
                let dstCgroup = lab.destinationCgroup(for: container)
                restore.cgroupRoot = "/" + dstCgroup.path
                let phase = FinalPhase(
                    source: FinalPhaseSource(cgroup: container.cgroup, initPID: container.initPID, tracker: tracker,
                                             criu: try lab.criu(in: nil), imagesDirectory: lab.imagesRoot + "/src-fp"),
                    destination: FinalPhaseDestination(store: store, criu: try lab.criu(in: lab.destinationNetns), restore: restore, cgroup: dstCgroup))
                let r = try phase.run(round: 4)
                let v = expectHealthyDestination(lab, container, processes: 1)
                print("BENCH final-phase 256 MiB: frozen \(r.frozenNanos / 1_000_000) ms (all local at restore); pause seen \(Int(pauseSeen(v))) ms; \(r)")
            } else {
                let move = try migration(lab: lab, container: container, mode: mode == "hybrid" ? .hybrid : .postCopy,
                                         tracker: tracker, store: store, tag: tag)
                let r = try move.run(round: 4)
                let v = expectHealthyDestination(lab, container, processes: 1)
                print("BENCH \(mode) 256 MiB: frozen \(r.frozenNanos / 1_000_000) ms, all local after \((r.allLocalNanos ?? 0) / 1_000_000) ms; pause seen \(Int(pauseSeen(v))) ms; \(r)")
            }
        }
    }
}
