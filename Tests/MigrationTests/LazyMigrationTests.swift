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

/// Real containers, real CRIU 4.2.1, the shipping engine through a loopback peer:
/// post-copy and hybrid moves through the destination's page proxy.
@Suite(.serialized)
struct LazyMigrationTests {
    static let hybridKeys = ["migration.incremental.memory.goal": "100", "migration.incremental.memory.iterations": "3",
                             "migration.incremental.memory.autoconverge": "false"]

    /// The restored writers run on and verify every page (after all pages are local).
    func expectHealthyDestination(_ lab: MigrationLab, _ container: RunningContainer, _ move: EngineMove,
                                  processes: Int) -> [pid_t: String] {
        let rootfs = move.destination.rootfs.path
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

    @Test func postCopyMoveVerifiesMemory() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("post", writer: ["64", "256", "16", "4000", "1"]))
        MigrationLab.waitUntilWriting(container, processes: 2)
        let move = try await lab.engineMove(container, strategy: .postCopy, tag: "post")
        let report = try move.result.get()
        let f = move.figures
        #expect(report.outcome == "moved" && report.allLocalMillis != nil)
        // Every page comes from the source (some ahead of their fault, then served locally).
        #expect(f.pagesFetchedOnFault >= 2 * 16384, "post-copy fetches everything")
        // (pagesRequested counts what lazy-pages asked for, and it asks again for the rest of a
        // short answer, which the proxy's walk makes whenever its window ends mid-request:
        // not comparable with pages served. Each page delivered once is what counts.)
        #expect(f.pagesFetchedTwice == 0 && f.pagesRequestedTwice == 0)
        #expect(f.pagesFetchedOnFault == f.lazyPages, "each lazy page fetched exactly once")
        #expect(move.doomedTasks == 2)
        #expect(move.destination.adopted != nil)
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        let verdicts = expectHealthyDestination(lab, container, move, processes: 2)
        print(String(format: "post-copy: application pause seen by the writers (max CLOCK_REALTIME gap): %.0f ms", pauseSeen(verdicts)))
    }

    @Test func hybridMoveServesLocallyAndFetchesOnlyTheDirtySet() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("hyb", writer: ["64", "256", "16", "4000", "1"]))
        MigrationLab.waitUntilWriting(container, processes: 2)
        let move = try await lab.engineMove(container, strategy: .hybrid, tag: "hyb",
                                            config: Self.hybridKeys.merging(["migration.incremental.memory.tracker": "uffd-wp"]) { $1 })
        let report = try move.result.get()
        let memory = try #require(report.memory)
        let f = move.figures
        let finalDirty = memory.finalDirtyPages ?? 0
        #expect(report.outcome == "moved" && report.allLocalMillis != nil)
        #expect(report.rounds?.count == 3)
        #expect(finalDirty > 0, "the writers dirtied pages after the last round")
        #expect(f.pagesFetchedTwice == 0 && f.pagesRequestedTwice == 0, "nothing fetched or asked twice")
        #expect(f.pagesServedLocally + f.pagesFetchedOnFault == f.pagesRequested)
        #expect(f.pagesRequested == f.lazyPages)
        // At the freeze the store held every lazy page but the final dirty set (and a few
        // pages never tracked); all of those are served locally, and only the dirty set can
        // have been fetched (the push makes that few).
        #expect(f.pagesFetchedOnFault <= finalDirty + 64, "fetched ≤ final dirty set + pages never sent")
        #expect(f.pagesServedLocally >= f.lazyPages - finalDirty - 64, "every page unchanged since it was sent is served locally")
        #expect(f.pagesFetchedOnFault < f.lazyPages / 10, "most pages were local")
        #expect(f.pagesPushed > 0)
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        let verdicts = expectHealthyDestination(lab, container, move, processes: 2)
        print(String(format: "hybrid: application pause seen by the writers (max CLOCK_REALTIME gap): %.0f ms", pauseSeen(verdicts)))
    }

    /// Cutting the connection to the source after the destination runs (post-copy, pages
    /// outstanding) for good (no reconnect within the grace period): the container is
    /// reported lost; the source tasks are dead and never ran again; the destination's
    /// tasks and lazy-pages daemon are gone.
    @Test func cutAfterTheDestinationRunsNeverLeavesTwoCopies() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("cut", writer: ["64", "64", "16", "4000", "0"]))
        MigrationLab.waitUntilWriting(container, processes: 1)
        let rootfs = container.rootfs.path
        let move = try await lab.engineMove(container, strategy: .postCopy, tag: "cut", config: ["migration.postcopy.grace": "2"]) { peer in
            peer.onEngine = { engine in
                engine.allLocalTimeout = 60
                engine.wrapUpstream = { SlowUpstream($0, delayMicros: 20_000) }
                engine.afterCommit = { method in
                    usleep(100_000)
                    peer.pageLinkDown = true  // for good: every reconnect fails
                    (method as? LazyRestore)?.pageProxy?.cutUpstream()
                }
            }
        }
        #expect(move.report == nil, "pages were outstanding: the container is lost")
        #expect(move.failureReport?.outcome == "lost")
        #expect(move.destination.lost != nil)
        #expect(move.doomedTasks == 1)
        #expect(eventually(15) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty },
                "the source tasks died (CRIU failed the dump and 'resumed' them into their pending SIGKILL)")
        let dst = lab.destinationCgroup(for: container)
        #expect(eventually(10) { MigrationLab.processes(of: dst).isEmpty }, "the half-restored destination was killed")
        // Nobody runs the writer any more: its counters stand still on both hosts.
        let dstRoot = move.destination.rootfs.path
        let at = (MigrationLab.counter(rootfs: rootfs, nsPID: 1), MigrationLab.counter(rootfs: dstRoot, nsPID: 1))
        usleep(500_000)
        #expect(MigrationLab.counter(rootfs: rootfs, nsPID: 1) == at.0, "no copy of the container runs on the source")
        #expect(MigrationLab.counter(rootfs: dstRoot, nsPID: 1) == at.1, "no copy of the container runs on the destination")
    }

    /// The documented other half of the rule: a cut after the destination runs loses the
    /// container only if it still needs a page from the source. In hybrid, once the push
    /// made every lazy page local, the cut costs nothing: the destination keeps running
    /// (CLOSE is answered locally), the source's dump fails and its doomed tasks die.
    @Test func hybridCutWhenEverythingIsLocalKeepsTheDestination() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("hcut", writer: ["32", "64", "16", "4000", "0"]))
        MigrationLab.waitUntilWriting(container, processes: 1)
        let move = try await lab.engineMove(container, strategy: .hybrid, tag: "hcut",
                                            config: Self.hybridKeys.merging(["migration.incremental.memory.iterations": "2",
                                                                             "migration.postcopy.grace": "2"]) { $1 }) { peer in
            peer.onEngine = { engine in
                engine.allLocalTimeout = 60
                engine.afterCommit = { method in
                    peer.pageLinkDown = true
                    (method as? LazyRestore)?.pageProxy?.cutUpstream()
                }
            }
        }
        #expect(eventually(15) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty },
                "the source never comes back")
        let f = move.figures
        let finalDirty = move.anyReport?.memory?.finalDirtyPages ?? 0
        if f.pagesPushed >= finalDirty + 64 {
            #expect(move.report != nil, "every page was local: the cut must not lose the container")
        }
        if move.report != nil {
            #expect(f.pagesFetchedOnFault == 0)
            _ = expectHealthyDestination(lab, container, move, processes: 1)
        } else {
            #expect(move.failureReport?.outcome == "lost")
            #expect(eventually(10) { MigrationLab.processes(of: lab.destinationCgroup(for: container)).isEmpty })
        }
    }

    /// Issue 13, item 8: the page channel breaks after the commit while pages are still
    /// outstanding, and the link comes back 2 s later. Faulting threads wait, the source
    /// reconnects with the migration's credentials, every request without a whole answer
    /// goes out again: the move ends "moved", nothing was fetched twice, and the restored
    /// writers verify every page.
    @Test func aPageChannelCutAfterTheCommitReconnectsAndTheMoveCompletes() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("relink", writer: ["64", "256", "16", "4000", "1"]))
        MigrationLab.waitUntilWriting(container, processes: 2)
        let move = try await lab.engineMove(container, strategy: .postCopy, tag: "relink",
                                            config: ["migration.postcopy.grace": "30"]) { peer in
            peer.pageChannelCuttable = true
            peer.onEngine = { engine in
                engine.allLocalTimeout = 60
                // Slower answers: pages are still outstanding when the cut comes.
                engine.wrapUpstream = { SlowUpstream($0, delayMicros: 5_000) }
                engine.afterCommit = { _ in
                    Thread {
                        usleep(300_000)
                        peer.pageLinkDown = true
                        peer.cutPageChannel()
                        sleep(2)
                        peer.pageLinkDown = false
                    }.start()
                }
            }
        }
        let report = try move.result.get()
        let f = move.figures
        #expect(report.outcome == "moved")
        #expect(f.pageReconnects >= 1, "the page channel was reconnected")
        #expect((report.memory?.pageReconnects ?? 0) >= 1, "the report says so")
        #expect(f.pagesFetchedTwice == 0 && f.pagesRequestedTwice == 0, "no answer applied twice")
        #expect(f.pagesFetchedOnFault == f.lazyPages, "each lazy page fetched exactly once")
        #expect(move.progress.contains { $0.contains("waiting for the link") }, "\(move.progress)")
        #expect(eventually(10) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty })
        let verdicts = expectHealthyDestination(lab, container, move, processes: 2)
        print(String(format: "reconnected post-copy: application pause seen by the writers: %.0f ms", pauseSeen(verdicts)))
        #expect(eventually(10) { Self.criuProcesses(under: lab.imagesRoot).isEmpty }, "no CRIU left")
    }

    /// The link stays down past the grace period (3 s): the container is lost on both
    /// hosts with a reason naming the link, no copy runs anywhere, and no CRIU is left.
    @Test func aPageChannelDownPastTheGraceLosesTheContainerAndLeavesNothing() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("nolink", writer: ["64", "64", "16", "4000", "0"]))
        MigrationLab.waitUntilWriting(container, processes: 1)
        let rootfs = container.rootfs.path
        let move = try await lab.engineMove(container, strategy: .postCopy, tag: "nolink",
                                            config: ["migration.postcopy.grace": "3"]) { peer in
            peer.pageChannelCuttable = true
            peer.onEngine = { engine in
                engine.allLocalTimeout = 60
                engine.wrapUpstream = { SlowUpstream($0, delayMicros: 20_000) }
                engine.afterCommit = { _ in
                    Thread {
                        usleep(100_000)
                        peer.pageLinkDown = true
                        peer.cutPageChannel()
                    }.start()
                }
            }
        }
        #expect(move.report == nil)
        #expect(move.failureReport?.outcome == "lost")
        let reason = move.failureReport?.reason ?? ""
        #expect(reason.contains("page channel") && reason.contains("stayed down for more than 3 s"), "\(reason)")
        #expect((move.destination.lost ?? "").contains("stayed down for more than 3 s"), "\(move.destination.lost ?? "not lost")")
        #expect(eventually(15) { !container.initProcess.isAlive && MigrationLab.processes(of: container.cgroup).isEmpty },
                "no copy on the source")
        let dst = lab.destinationCgroup(for: container)
        #expect(eventually(10) { MigrationLab.processes(of: dst).isEmpty }, "no copy on the destination")
        #expect(eventually(10) { Self.criuProcesses(under: lab.imagesRoot).isEmpty }, "no CRIU left")
        let dstRoot = move.destination.rootfs.path
        let at = (MigrationLab.counter(rootfs: rootfs, nsPID: 1), MigrationLab.counter(rootfs: dstRoot, nsPID: 1))
        usleep(500_000)
        #expect(MigrationLab.counter(rootfs: rootfs, nsPID: 1) == at.0 && MigrationLab.counter(rootfs: dstRoot, nsPID: 1) == at.1,
                "exactly zero running copies")
    }

    /// CRIU processes (dump, lazy-pages, restore) working in `directory`: their command
    /// line names it (-D).
    static func criuProcesses(under directory: String) -> [String] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.filter { Int($0) != nil } ?? []
        return pids.compactMap { pid -> String? in
            guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return nil }
            let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return line.contains("criu") && line.contains(directory) ? "\(pid): \(line)" : nil
        }
    }

    /// A failure before the destination runs (restore can't find the rootfs): rolled back,
    /// the source runs on and verifies, nothing is left on the destination.
    @Test func failureBeforeTheDestinationRunsLeavesTheSourceRunning() async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("lfail", writer: ["16", "16", "8", "4000", "0"]))
        MigrationLab.waitUntilWriting(container, processes: 1)
        let move = try await lab.engineMove(container, strategy: .postCopy, tag: "lfail",
                                            destinationImage: lab.directory + "/no-such-image")
        lab.expectRolledBack(container, move)
    }

    /// The mechanism behind never-two-copies: after SIGKILL to every frozen source task,
    /// CRIU's page server still serves every lazy page with the contents at the freeze
    /// (they sit in CRIU's pipes), and a failed session then cannot bring them back.
    @Test func pageServerServesAfterTheSourceTasksAreKilled() throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let container = try lab.start(try lab.spec("kill", writer: ["32", "32", "16", "4000", "0"]))
        MigrationLab.waitUntilWriting(container, processes: 1)
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
    /// 256 MiB writer in every strategy (`godwit bench migrate` is the real benchmark).
    @Test(.enabled(if: ProcessInfo.processInfo.environment["GODWIT_BENCH"] != nil))
    func benchLazyModes() async throws {
        for strategy in MigrationStrategy.allCases {
            let lab = try MigrationLab()
            defer { lab.cleanUp() }
            let tag = strategy.rawValue.replacingOccurrences(of: "-", with: "")
            let container = try lab.start(try lab.spec("b" + String(tag.prefix(6)), writer: ["256", "256", "16", "4000", "0"]))
            MigrationLab.waitUntilWriting(container, processes: 1)
            let move = try await lab.engineMove(container, strategy: strategy, tag: tag, config: Self.hybridKeys)
            let r = try move.result.get()
            let v = expectHealthyDestination(lab, container, move, processes: 1)
            print("BENCH \(strategy.rawValue) 256 MiB: frozen \(Int(r.frozenMillis ?? 0)) ms, all local after \(Int(r.allLocalMillis ?? r.frozenMillis ?? 0)) ms; pause seen \(Int(pauseSeen(v))) ms")
        }
    }
}
