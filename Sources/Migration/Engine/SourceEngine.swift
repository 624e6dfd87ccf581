import API
import Checkpoint
import Foundation
import GodwitCore
import Memory

/// The source's half of a move. It plans with the destination, syncs the filesystem while
/// the container runs, [pre-copy, hybrid: rounds of dirty pages into the destination's
/// page store], lazy-dumps (CRIU freezes the container and keeps it frozen while its page
/// server holds the memory), syncs the files once more, sends the images, relays the page
/// channel while the destination restores, then THE COMMIT: the source's tasks are doomed
/// (SIGKILL while frozen) before the destination may run them.
///
/// States, each carrying what is valid in it (see docs/architecture.md):
///
///     planning ──► transferring ──► frozen ──► restoring ──► committed ──► moved
///        │              │             │            │             └──────► lost
///        └──────────────┴─────────────┴────────────┴──► rolledBack
///
/// Before the commit every failure runs the revert list: the destination removes its copy,
/// then the page session fails (CRIU resumes the source), the source thaws. From the commit
/// on nothing is reverted: the container lives on the destination, or is lost.
///
/// Concurrency model: an actor; `run()` owns `state`, the revert list and the report.
/// Blocking work (CRIU, rsync, page I/O) runs on dispatch threads through `blocking`, on
/// values handed to it (a tracker and a writer go in a HandOff and are used by that thread
/// alone until it returns). The final filesystem sync and the hybrid push are the only work
/// running beside `run()`, each owned by the state that started it; whether the relay has
/// connected is the one flag those threads read, behind its own Mutex.
public actor SourceEngine {
    public enum State: Sendable {
        case planning
        case transferring(Transferring)
        case frozen(Frozen)
        case restoring(Restoring)
        case committed(Committed)
        case moved
        case rolledBack(reason: String)
        case lost(reason: String)

        public var name: String {
            switch self {
            case .planning: "planning"
            case .transferring: "transferring"
            case .frozen: "frozen"
            case .restoring: "restoring"
            case .committed: "committed"
            case .moved: "moved"
            case .rolledBack: "rolled back"
            case .lost: "lost"
            }
        }
    }

    /// The destination accepted the container; the container runs.
    public struct Transferring: Sendable {
        public var session: any MigrationSession
        public var behaviour: any StrategyBehaviour
    }

    /// CRIU's lazy dump holds the container frozen; its memory waits in the page server.
    public struct Frozen: Sendable {
        public var transferring: Transferring
        public var dump: LazyDump
        /// The page-server connection CRIU was handed (it never listens).
        public var connection: PageServerConnection
        public var frozenAt: UInt64
    }

    /// The page channel relays the destination's page-server session to CRIU.
    public struct Restoring: Sendable {
        public var frozen: Frozen
        public var relay: PageServerRelay
    }

    /// The source's tasks are doomed; the destination runs (and may still fetch pages).
    public struct Committed: Sendable {
        public var restoring: Restoring
    }

    public let host: any SourceHost
    public let peer: any MigrationPeer
    public let request: MoveRequest
    public let progress: ProgressReporter
    /// Test hooks, called in the named state; a throw fails the move there.
    public let hooks: SourceHooks
    public private(set) var state: State = .planning

    private var revert = RevertList()
    private var report: MoveReport
    private var phases: [MovePhase] = []
    var phase = "negotiation"
    private var memory = MoveMemoryFigures()
    /// The cap and compression of this move (none until the negotiation decided them).
    var link = MoveLink.none
    private let t0 = SourceEngine.now()

    public init(host: any SourceHost, peer: any MigrationPeer, request: MoveRequest, progress: ProgressReporter = .silent,
                hooks: SourceHooks = SourceHooks()) {
        self.host = host; self.peer = peer; self.request = request; self.progress = progress; self.hooks = hooks
        let c = host.container
        report = MoveReport(container: c.name, newName: request.newName ?? c.name, source: host.hostName,
                            destination: peer.name, mode: request.mode ?? .stopAndCopy, modeReason: "", outcome: "moved",
                            startedAt: Date(), totalMillis: 0)
    }

    nonisolated static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
    nonisolated private func millis(since t: UInt64) -> Double { Double(Self.now() - t) / 1e6 }

    /// The one place the state changes.
    private func enter(_ next: State) { state = next }

    /// Runs `body` as the named phase, timing it and counting the bytes it reports.
    func step<T>(_ name: String, expected: UInt64? = nil, _ body: () async throws -> (T, UInt64)) async throws -> T {
        phase = name
        progress.begin(name, expected: expected)
        let t = Self.now()
        let (value, bytes) = try await body()
        phases.append(MovePhase(name: name, millis: millis(since: t), bytes: bytes))
        return value
    }

    /// Moves the container. Returns the report of a move that ended with the container on
    /// the destination; throws (with phase and outcome in the error) when it rolled back or
    /// was lost, after recording the report in `failureReport`.
    public private(set) var failureReport: MoveReport?

    public func run() async throws -> MoveReport {
        var tracker: ContainerDirtyTracker?
        defer { tracker?.close() }
        do {
            let transferring = try await negotiate()
            let (t, writer, channel) = try await preCopy(transferring)
            tracker = t
            let frozen = try await freeze(transferring, tracker: t, precopy: writer, channel: channel)
            let restoring = try await restore(frozen)
            // From the doom on, cancelling the move (`godwit operation cancel`) can't stop
            // it: the container only lives on if the destination runs it.
            try await Task.detached { [self] in
                let (committed, status) = try await commit(restoring)
                try await finish(committed, after: status)
            }.value
            enter(.moved)
        } catch {
            return try await fail(error)
        }
        report.totalMillis = millis(since: t0)
        report.phases = phases
        report.memory = report.memory ?? (memory.tracker != nil ? memory : nil)
        report.memory = linkFigures(report.memory)
        host.journal(nil)
        await session?.deliver(report)
        await session?.close()
        return report
    }

    /// Set once the destination accepted; used for the report and closing only.
    private var session: (any MigrationSession)?

    // MARK: planning → transferring

    private func negotiate() async throws -> Transferring {
        let c = host.container
        let hooks = self.hooks
        // From the first step on, a daemon that dies leaves a trace its successor records.
        host.journal(SourceJournal(migrationID: "", peer: peer.name, container: c.name, phase: .negotiation,
                                   initPID: c.initPID, imagesDirectory: c.imagesDirectory))
        let (strategy, reason, theirs) = try await step("negotiation") { () -> ((MigrationStrategy, String, PeerCapabilities), UInt64) in
            try await hooks.reach(.negotiation)
            let theirs = try await peer.capabilities()
            let planned = try MovePlanner.plan(requested: request.mode, source: try await host.capabilities(), destination: theirs,
                                               container: .init(memoryBytes: host.memoryBytes(), config: c.config))
            return ((planned.0, planned.1, theirs), 0)
        }
        decideLink(destination: theirs)
        report.mode = strategy
        report.modeReason = reason
        let session = try await peer.begin(IncomingMigrationRequest(
            name: request.newName ?? c.name, image: c.image, imageFingerprint: c.imageFingerprint, config: c.config.values,
            ipv4: c.ipv4, mac: c.mac,
            mode: strategy, sourceHost: host.hostName, criuVersion: try await host.capabilities().criuVersion,
            imageBytes: c.imageRootfs == nil ? nil : c.imageBytes))
        self.session = session
        revert.add("destination: remove its copy") { await session.abort(reason: "the source rolled the move back") }
        host.journal(SourceJournal(migrationID: session.id, peer: peer.name, container: c.name, phase: .transferring,
                                   initPID: c.initPID, imagesDirectory: c.imagesDirectory))
        let t = Transferring(session: session, behaviour: strategy.behaviour)
        enter(.transferring(t))
        try await hooks.reach(.transferring)
        // The image first: the destination prepares the container's rootfs on it.
        if session.imageNeeded { try await carryImage(session) }

        // The files, while the container runs.
        try await step("filesystem sync") {
            let stats = try await blocking { try FilesystemSync.push(from: c.syncDirectory, channel: { try session.open(.rsync) },
                                                                     spawnHelper: c.spawnHelper) }
            return ((), UInt64(max(0, stats.bytesSent)))
        }
        return t
    }

    // MARK: transferring: pre-copy rounds

    private func preCopy(_ t: Transferring) async throws -> (ContainerDirtyTracker?, PageRecordWriter?, Int32?) {
        guard t.behaviour.roundsWhileRunning else { return (nil, nil, nil) }
        let c = host.container
        let kind = ContainerDirtyTracker.kind(hostChoice: try await host.hostTracker(), forced: c.config.forcedTracker)
        let tracker = ContainerDirtyTracker.forCgroup(c.cgroup, kind: kind)
        memory.tracker = kind.rawValue
        // Asking for pre-copy is asking for rounds, whatever migration.incremental.memory says.
        let settings = { var s = ConvergenceSettings(config: c.config); s.enabled = true; return s }()
        let fd = try await blocking { try t.session.open(.precopy) }
        revert.add("close the pre-copy channel") { close(fd) }
        let writer = link.writer(onto: FileDescriptorStream(fd: fd, owns: false))
        let progress = self.progress
        let hooks = self.hooks
        let resident = host.memoryBytes()
        // The tracker and the writer go to the rounds' thread and come back after it.
        let handed = HandOff((tracker, writer))
        let pre = try await step("pre-copy", expected: resident) { () -> (PreCopyReport, UInt64) in
            let done = try await blocking { () throws -> PreCopyReport in
                let (tracker, writer) = handed.value
                let session = PreCopySession(tracker: tracker, sender: PreCopySender(writer: writer), settings: settings,
                                             throttle: settings.autoConverge ? try? CPUThrottle(cgroup: c.cgroup) : nil,
                                             progress: { progress.note($0) })
                if hooks.isSet { session.beforeRound = { try hooks.reachRound($0) } }
                session.roundProgress = { round, bytes in
                    progress.advance(bytes, expected: UInt64(round.dirtyPages) * systemPageSize, round: round,
                                     force: round.pagesSent == 0)
                }
                return try session.run()
            }
            return (done, done.totalBytes)
        }
        memory.finalReason = pre.finalReason
        report.rounds = pre.rounds.map { r in
            MoveRound(round: r.round, dirtyPages: r.dirtyPages, residentPages: r.residentPages, dataPages: r.dataPages,
                      zeroPages: r.zeroPages, bytes: r.bytesSent, millis: Double(r.copyNanos) / 1e6,
                      dirtyPagesPerSecond: r.dirtyPagesPerSecond, predictedPauseMillis: r.predictedPauseSeconds.map { $0 * 1000 },
                      throttlePercent: r.throttlePercent, decision: r.decision)
        }
        return (tracker, writer, fd)
    }

    // MARK: transferring → frozen

    private func freeze(_ t: Transferring, tracker: ContainerDirtyTracker?, precopy writer: PageRecordWriter?,
                        channel precopyFD: Int32?) async throws -> Frozen {
        let c = host.container
        try? FileManager.default.removeItem(atPath: c.imagesDirectory)
        let freezeAt = Self.now()
        var finalSync: Task<SyncStats, Error>?
        var finalScan: Task<HandOff<(DirtyScan, RoundStats)>, Error>?
        let finalRound = (report.rounds?.count ?? 0) + 1
        let inline = t.behaviour.finalDirtySet == .inline
        let scanning = tracker.flatMap { tracker in writer.flatMap { w in precopyFD.map { HandOff((tracker, w, $0)) } } }
        let host = self.host
        let (dump, connection) = try await step("checkpoint") { () -> ((LazyDump, PageServerConnection), UInt64) in
            var options = DumpOptions(pid: c.initPID, imagesDirectory: c.imagesDirectory)
            options.freezerCgroup = c.cgroup.directory(for: "freezer")
            options.freezeBeforeDump = true
            options.cgroup = c.cgroup
            let connection = try PageServerConnection.make()
            options.lazyPagesSocket = connection.criu
            // Before CRIU freezes anything: a daemon that dies from here on finds this at its
            // next start and thaws the container (SourceRecovery).
            host.journal(SourceJournal(migrationID: t.session.id, peer: peer.name, container: c.name, phase: .frozen,
                                       initPID: c.initPID, imagesDirectory: c.imagesDirectory))
            let relayConnected = relayFlag
            let d: LazyDump
            do {
                // Off the cooperative pool: starting the dump waits for the accept queues to drain.
                let dumpOptions = options
                d = try await blocking { try LazyDump(criu: c.criu, options: dumpOptions) }
            } catch {
                close(connection.ours)
                throw error
            }
            revert.add("source: fail the page session, resume the container") {
                await blocking {
                    // Until the relay takes the connection over, failing the session is ours.
                    if !relayConnected.value {
                        PageServerConnection.abandon(connection.ours)
                        close(connection.ours)
                    }
                    if d.waitForExit(timeout: 30) == nil { d.kill() }
                    host.resume()
                }
            }
            // Runs before the source resumes (never two copies), after the sync below ended.
            revert.add("destination: remove its copy (before the source resumes)") {
                await t.session.abort(reason: "the source rolled the move back")
            }
            // Files can't change once every task is held: the last filesystem sync runs
            // while CRIU is still dumping, instead of adding to the freeze after it.
            let sync = Task {
                try await blocking { () throws -> SyncStats in
                    guard poll(timeout: 60, { host.isHeldStill() || !d.isRunning }), d.isRunning else {
                        throw GodwitError("CRIU's dump ended before the container was frozen")
                    }
                    return try FilesystemSync.push(from: c.syncDirectory, channel: { try t.session.open(.rsync) },
                                                   spawnHelper: c.spawnHelper)
                }
            }
            finalSync = sync
            // No rsync may still write while the destination removes its copy.
            revert.add("wait for the final filesystem sync") { _ = await sync.result }
            // The final scan needs the tasks held, not CRIU's dump: it runs alongside the
            // dump (race-free: nothing runs once the cgroup is frozen). It tells the
            // destination which stored pages changed since they were sent; pre-copy sends
            // their contents right behind it, read from the held tasks; hybrid pushes them
            // in the background after the freeze.
            if let scanning {
                let scan = Task {
                    try await blocking { () throws -> HandOff<(DirtyScan, RoundStats)> in
                        guard poll(timeout: 60, { host.isHeldStill() || !d.isRunning }), d.isRunning else {
                            throw GodwitError("CRIU's dump ended before the container was frozen")
                        }
                        let (tracker, writer, fd) = scanning.value
                        let scan = try tracker.scan(attachNew: false)
                        let sender = PreCopySender(writer: writer)
                        let sent = inline ? try sender.sendRound(scan, round: finalRound, tracker: nil)
                                          : try sender.sendInvalidations(scan, round: finalRound)
                        shutdown(fd, Int32(SHUT_WR))
                        return HandOff((scan, sent))
                    }
                }
                finalScan = scan
                // On a rollback the scan may sit in a write to a destination that no longer
                // reads: end the channel first, then wait, so the source resumes only after
                // the scan let go of the tasks.
                let channel = scanning.value.2
                revert.add("wait for the final scan") {
                    shutdown(channel, Int32(SHUT_RDWR))
                    _ = await scan.result
                }
            }
            try await blocking { try d.waitUntilServing() }
            return ((d, connection), 0)
        }
        let frozen = Frozen(transferring: t, dump: dump, connection: connection, frozenAt: freezeAt)
        enter(.frozen(frozen))
        try await hooks.reach(.frozen)

        if let finalScan {
            // What is left of the scan that started with the dump (this phase only shows
            // the part of it that outlasted CRIU).
            let (scan, sent) = try await step(inline ? "final scan + dirty pages" : "final scan") { () -> ((DirtyScan, RoundStats), UInt64) in
                let result = try await finalScan.value.value
                return (result, result.1.bytesSent)
            }
            // The tracker is let go after the move (run's defer), not here: closing the
            // userfaultfd clears the write protection of every registered page, work
            // proportional to memory that has no place in the freeze.
            memory.finalDirtyPages = scan.dirtyPages
            if inline { memory.pagesPushed = sent.dataPages + sent.zeroPages }
            progress.note("final scan: \(scan.dirtyPages) pages dirty since the last round")
            if t.behaviour.finalDirtySet == .pushed {
                let fd = try await blocking { try t.session.open(.push) }
                let push = PushSender(scan: scan, round: finalRound + 1, fd: fd, link: link)
                pushSender = push
                revert.add("stop the push") { push.abort() }
            }
        }
        try await step("final filesystem sync") {
            let stats = try await finalSync!.value
            return ((), UInt64(max(0, stats.bytesSent)))
        }
        let imageBytes = directorySize(c.imagesDirectory)
        try await step("images", expected: imageBytes) {
            try await hooks.reach(.images)
            let bytes = try await blocking { () throws -> UInt64 in
                let fd = try t.session.open(.images)
                defer { close(fd) }
                let sent = try ImageTransfer.send(directory: c.imagesDirectory, to: fd) { $0.hasSuffix(".log") }
                try ImageTransfer.finishSending(fd)
                return sent
            }
            return ((), bytes)
        }
        return frozen
    }

    private var pushSender: PushSender?
    /// Whether the relay took the page-server connection over (else the dump's undo fails
    /// the session itself, so that CRIU fails the dump and resumes the source).
    private let relayFlag = Locked(false)

    private func directorySize(_ path: String) -> UInt64 {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        return names.reduce(0) { sum, name in
            sum + ((try? FileManager.default.attributesOfItem(atPath: path + "/" + name)[.size] as? UInt64) ?? 0)
        }
    }

    // MARK: frozen → restoring

    private func restore(_ frozen: Frozen) async throws -> Restoring {
        let session = frozen.transferring.session
        let lazily = frozen.transferring.behaviour.restore == .lazy
        let pageChannel = try await blocking { try session.open(.pages) }
        let relay = PageServerRelay(channel: pageChannel, connected: frozen.connection.ours, limiter: link.limiter)
        relayFlag.value = true
        // Newest first: the relay resets (CRIU fails the dump) after the destination's copy
        // went, and before the dump's own undo waits for CRIU to exit.
        revert.add("source: reset the page relay") { relay.abort() }
        revert.add("destination: remove its copy (before the page session fails)") {
            await session.abort(reason: "the source rolled the move back")
        }
        let restoring = Restoring(frozen: frozen, relay: relay)
        enter(.restoring(restoring))
        try await hooks.reach(.restoring)
        // Stop-and-copy and pre-copy: the destination fetches all it lacks now; the bytes
        // it pulls through the relay are this phase's progress.
        let expected = lazily ? nil : host.memoryBytes()
        let watcher = lazily ? nil : Task { [progress] in
            while !Task.isCancelled {
                progress.advance(relay.bytesToDestination, expected: expected)
                try? await Task.sleep(for: .milliseconds(200))
            }
        }
        defer { watcher?.cancel() }
        let restored: IncomingMigrationStatus = try await step(lazily ? "restore (lazy)" : "memory + restore", expected: expected) {
            let status = try await followRestore(session, relay: relay)
            return (status, lazily ? 0 : relay.bytesToDestination)
        }
        memory.lazyPages = restored.lazyPages
        if !lazily {
            phases.append(MovePhase(name: "destination: fetch", millis: restored.fetchMillis))
            if frozen.transferring.behaviour.restore == .copy {
                phases.append(MovePhase(name: "destination: rebuild", millis: restored.rebuildMillis))
            }
            memory.pagesFetched = restored.pagesFetched
            memory.pagesFromStore = restored.pagesFromStore
        }
        phases.append(MovePhase(name: "destination: criu restore", millis: restored.restoreMillis))
        try await hooks.reach(.beforeCommit)
        return restoring
    }

    // MARK: restoring → committed

    /// Returns the committed state and the destination's answer to the commit.
    private func commit(_ restoring: Restoring) async throws -> (Committed, IncomingMigrationStatus) {
        phase = "commit"
        progress.begin("commit")
        let relay = restoring.relay
        if restoring.frozen.transferring.behaviour.restore == .lazy {
            // From here on a broken page channel is reconnected (with the migration's
            // credentials) for the grace period instead of failing CRIU's session. Before
            // the doom: a relay that already ended means CRIU failed the dump and resumed
            // the tasks, so the move rolls back instead.
            let session = restoring.frozen.transferring.session
            let reconnect = PageServerRelay.Reconnect(graceSeconds: Double(host.container.config.postCopyGraceSeconds),
                                                      peer: peer.name) { try session.open(.pages, within: $0) }
            guard restoring.relay.keepAcrossBreaks(reconnect) else {
                throw GodwitError("the page channel to \(peer.name) broke just before the commit"
                                  + (restoring.relay.failure.map { ": \($0)" } ?? ""))
            }
        } else if relay.hasEnded && !relay.committed {
            // A page session that ended (the destination's daemon died, the link broke)
            // made CRIU give the tasks back: they ran on, so the destination's copy is stale.
            throw GodwitError("the page session with \(peer.name) ended before the commit; the container resumed here")
        }
        if !restoring.frozen.dump.isRunning {
            throw GodwitError("CRIU's dump ended before the commit; the container resumed here")
        }
        // The point of no return: doomed first, then the destination runs.
        revert.disarm()
        let committed = Committed(restoring: restoring)
        enter(.committed(committed))
        let c = host.container
        host.journal(SourceJournal(migrationID: restoring.frozen.transferring.session.id, peer: peer.name, container: c.name,
                                   phase: .doomed, initPID: c.initPID, imagesDirectory: c.imagesDirectory))
        let silence = host.silencer()
        doomedTasks = try host.doom()
        // Alongside the commit request, not before it: it is not downtime of the copy
        // that is about to run.
        let progress = self.progress
        if let silence {
            Task.detached {
                if let why = silence() { progress.note("the doomed copy's links stay up: \(why)") }
            }
        }
        try? await hooks.reach(.committing)
        let t = Self.now()
        let status = try await confirmCommit(restoring.frozen.transferring.session)
        phases.append(MovePhase(name: "commit", millis: millis(since: t)))
        // Frozen until the tasks ran there: the destination's bookkeeping after the thaw
        // (records, ARP) is not downtime. Its own duration, so no clocks are compared.
        let ranFor = min(status.runningForMillis ?? 0, millis(since: t))
        report.frozenMillis = Double(Self.now() - restoring.frozen.frozenAt) / 1e6 - ranFor
        progress.note("running on \(peer.name)")
        return (committed, status)
    }

    /// The destination no longer needs the page session (it lost the container, or the
    /// relay gave up): a lost move then ends CRIU's session too.
    var pageSessionOver = false

    /// How many source tasks the commit doomed.
    public private(set) var doomedTasks = 0

    // MARK: committed → moved

    private func finish(_ committed: Committed, after commitStatus: IncomingMigrationStatus) async throws {
        let restoring = committed.restoring
        let session = restoring.frozen.transferring.session
        let relay = restoring.relay
        if restoring.frozen.transferring.behaviour.restore == .lazy {
            var status = commitStatus
            // The rest of memory streams; done when every page is there.
            let t = Self.now()
            phase = "background page transfer"
            try? await hooks.reach(.pageTransfer)
            status = try await followBackgroundTransfer(session, relay: relay, after: status)
            phases.append(MovePhase(name: "background page transfer", millis: millis(since: t), bytes: relay.bytesToDestination))
            if let push = pushSender, let pushed = await blocking({ push.wait(timeout: 30) }) {
                phases.append(MovePhase(name: "background push", millis: Double(pushed.nanos) / 1e6, bytes: pushed.bytes))
            }
            memory.pagesServedLocally = status.pagesServedLocally
            memory.pagesPushed = status.pagesPushed
            memory.pagesFetchedOnFault = status.pagesFetchedOnFault
            memory.pagesFetchedTwice = status.pagesFetchedTwice
            memory.pageReconnects = relay.reconnects
            report.memory = memory
            report.allLocalMillis = status.allLocalAfterCommitMillis.map { $0 + (report.frozenMillis ?? 0) }
        } else if restoring.frozen.transferring.behaviour.restore == .localLazy {
            phase = "loading memory on \(peer.name)"
            let status = try await waitUntilLoaded(session, after: commitStatus)
            report.allLocalMillis = status.allLocalAfterCommitMillis.map { $0 + (report.frozenMillis ?? 0) }
        }
        report.memory = memory
        let dump = restoring.frozen.dump
        await blocking {
            // A relay still waiting for a reconnect (the destination answered CLOSE itself
            // while the link was down) has nothing left to serve. Otherwise CLOSE ends it
            // (a copy restore's CLOSE can take long under load: 30 s, as before).
            if relay.linkDown != nil { relay.abort("every page reached the destination") }
            if !relay.wait(timeout: 30) {
                relay.abort("every page reached the destination")
                _ = relay.wait(timeout: 10)
            }
            if dump.waitForExit(timeout: 30) == nil { dump.kill() }
        }
    }

    // MARK: failure

    private func fail(_ error: Error) async throws -> MoveReport {
        let reason = (error as? GodwitError)?.message ?? "\(error)"
        report.reason = reason
        report.failedPhase = phase
        if report.memory == nil, memory.tracker != nil { report.memory = memory }
        report.memory = linkFigures(report.memory)
        let committed: Bool
        if case .committed = state { committed = true } else { committed = false }
        if case .committed(let c) = state, c.restoring.relay.hasEnded || c.restoring.relay.linkDown != nil || pageSessionOver {
            // Nothing may stay behind: the relay stops reconnecting, CRIU's session fails
            // (its tasks are doomed already) and CRIU exits. A relay still serving is left
            // alone: the destination may run the container and fetch on (we only lost sight
            // of it), and the session ends when it does.
            let relay = c.restoring.relay, dump = c.restoring.frozen.dump
            await blocking {
                relay.abort("the move was lost: \(reason)")
                _ = relay.wait(timeout: 10)
                if dump.waitForExit(timeout: 30) == nil { dump.kill() }
            }
        }
        if committed {
            report.outcome = "lost"
            enter(.lost(reason: reason))
        } else {
            report.outcome = "rolled-back"
            progress.begin("rolling back")
            pushSender?.abort()
            var undo = revert
            revert = RevertList()
            await undo.run()
            enter(.rolledBack(reason: reason))
        }
        report.totalMillis = millis(since: t0)
        report.phases = phases
        failureReport = report
        host.journal(nil)
        await session?.close()
        let failure = (error as? GodwitError) ?? GodwitError.wrap(error, doing: "moving \(host.container.name)")
        throw failure.with("host", host.hostName).with("phase", phase).with("outcome", committed
            ? "container lost: its source tasks were killed at the commit; see `godwit info \(report.newName)` on \(peer.name)"
            : "rolled back: \(host.container.name) runs on \(host.hostName)")
    }
}
