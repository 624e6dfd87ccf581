import API
import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

/// What the destination half of the engine needs from the host that takes the container.
/// The daemon implements it with its records and runtime; tests with a bare runtime.
public protocol DestinationHost: Sendable {
    var hostName: String { get }
    /// Where the filesystem sync writes (nothing mounted yet).
    var syncDirectory: String { get }
    /// Mounts the rootfs, creates the cgroup, and says how CRIU restores here.
    func restoreTarget(images: String, store: String) throws -> IncomingTarget
    /// Records the restored container as running, limits applied.
    func adopt(pid: pid_t) throws
    /// Tells the segment the container's address is behind this host now.
    func announce(pid: pid_t)
    /// Removes everything of the incoming container (its record, files, cgroup).
    func discard() async
    /// After the commit the container could not be kept (its memory never arrived).
    func markLost(_ why: String)
    /// Persists that the container runs while some of its memory is still on the source
    /// (true from just before a lazy commit until every page arrived): a daemon that dies
    /// in between leaves its successor this mark, and it kills the container rather than
    /// let it run on pages that will never come.
    func pagesPending(_ pending: Bool)
    /// Persists where the move stands once something was restored (nil: it ended), for a
    /// daemon that restarts before the end (see DestinationJournal).
    func journal(_ phase: DestinationJournal.Phase?, pid: pid_t)
    /// Where the container's image is received when this host lacked it (nil: it has it,
    /// and an image channel is refused). Empty of anything but what the source sends.
    var imageStaging: String? { get }
    /// The image channel's rsync ended well: check what arrived and make it this host's
    /// image (before the rootfs is prepared on it). Throws to roll the move back.
    func imageArrived() throws
}

extension DestinationHost {
    public var imageStaging: String? { nil }
    public func imageArrived() throws { throw GodwitError("\(hostName) expected no image") }
}

/// The destination's half of a move: it receives the data channels, restores (tasks left
/// stopped), runs the container at the commit, and for lazy restores waits until every
/// page is local.
///
///     receiving ──► restoring ──► restored ──► committed ──► moved
///         │             │            │             └──────► lost
///         └─────────────┴────────────┴──► rolledBack (abort)
///
/// `abort` is refused once committed: after the commit the destination holds the only copy.
///
/// Concurrency model: channel handlers run on their own threads, the control calls on the
/// daemon's tasks (or the loopback's), the post-commit wait on a detached task. Everything
/// that changes lives in `shared` (the state, the channels' descriptors and errors, the
/// figures' source) and `settings`, each a Mutex; the blocking work (rsync, CRIU, page I/O)
/// runs outside them, on values taken out.
public final class DestinationEngine: Sendable {
    public enum State: Sendable {
        case receiving(Receiving)
        case restoring(Receiving)
        case restored(Restored)
        case committed(Restored)
        case finished(Outcome)

        public var name: String {
            switch self {
            case .receiving: "receiving"
            case .restoring: "restoring"
            case .restored: "restored"
            case .committed(let r): r.method.kind == .copy ? "done" : "fetching"
            case .finished(let o): o.phase
            }
        }
    }

    public enum Outcome: Sendable {
        case moved
        case rolledBack(String)
        case lost(String)

        /// The phase name the source polls for.
        public var phase: String {
            switch self {
            case .moved: "done"
            case .rolledBack: "aborted"
            case .lost: "lost"
            }
        }

        /// The record's status word.
        public var status: String {
            switch self {
            case .moved: "moved"
            case .rolledBack: "rolled-back"
            case .lost: "lost"
            }
        }
    }

    /// Where the data channels deliver while receiving. Unchecked: PageStore is a plain
    /// class. The pre-copy handler writes into it until it leaves `transfers`; the restore
    /// waits on `transfers` before it touches the store, and the group's wait orders the two.
    public final class Receiving: @unchecked Sendable {
        /// Pre-copy rounds arrive into this store (empty unless rounds fill it), so restore
        /// has one path: fetch or serve only what the store lacks.
        let store: PageStore
        /// Channel handlers still running (filesystem sync, images, pre-copy).
        let transfers = DispatchGroup()
        init(store: PageStore) { self.store = store }
    }

    /// What changes while the migration runs, behind `shared`.
    private struct Shared {
        var state: State
        /// The restore method once chosen (kept through every later state, for the figures).
        var restoringMethod: (any RestoreMethod)?
        /// Pre-copy rounds applied to the store (the final scan's included).
        var roundsReceived = 0
        var errors: [String] = []
        var pagesFD: Int32?
        var pushFD: Int32?
        var precopyFD: Int32?
        /// The image channel was opened (once per migration: it fills a fresh staging tree).
        var imageOpened = false
        var imageInstalled = false
        /// When the source last did something for this migration (a call, a channel, a
        /// pre-copy round): what "the source went silent" is measured against.
        var lastActivity = DispatchTime.now().uptimeNanoseconds
    }

    /// Set before the migration starts (by the daemon or a test), read while it runs.
    private struct Settings {
        var allLocalTimeout: TimeInterval = 600
        var wrapUpstream: (@Sendable (LazyPageUpstream) -> LazyPageUpstream)?
        var afterCommit: (@Sendable (any RestoreMethod) -> Void)?
        var onFinish: (@Sendable (Outcome) -> Void)?
    }

    /// Restored, tasks stopped (or running once committed).
    public struct Restored: Sendable {
        public let method: any RestoreMethod
        public let pid: pid_t
        public init(method: any RestoreMethod, pid: pid_t) { self.method = method; self.pid = pid }
    }

    public let id: String
    public let request: IncomingMigrationRequest
    public let behaviour: any StrategyBehaviour
    public let host: any DestinationHost
    /// Scratch space of this migration: images and the page store.
    public let directory: String
    private let shared: Mutex<Shared>
    private let settings = Mutex(Settings())
    private let progress: ProgressReporter

    /// How long a lazy restore may go without any page arriving after the commit before the
    /// container is given up (progress, not duration: a slow link only takes longer).
    public var allLocalTimeout: TimeInterval {
        get { settings.withLock { $0.allLocalTimeout } }
        set { settings.withLock { $0.allLocalTimeout = newValue } }
    }
    /// Test hooks: wrap the lazy restore's upstream (a slow link), and look at the restore
    /// right after the commit (cut its link).
    var wrapUpstream: (@Sendable (LazyPageUpstream) -> LazyPageUpstream)? {
        get { settings.withLock { $0.wrapUpstream } }
        set { settings.withLock { $0.wrapUpstream = newValue } }
    }
    var afterCommit: (@Sendable (any RestoreMethod) -> Void)? {
        get { settings.withLock { $0.afterCommit } }
        set { settings.withLock { $0.afterCommit = newValue } }
    }
    /// Called once, when the migration ends, with how.
    public var onFinish: (@Sendable (Outcome) -> Void)? {
        get { settings.withLock { $0.onFinish } }
        set { settings.withLock { $0.onFinish = newValue } }
    }

    public var imagesDirectory: String { directory + "/images" }
    var storeDirectory: String { directory + "/pages" }

    public init(id: String, request: IncomingMigrationRequest, host: any DestinationHost, directory: String,
                progress: ProgressReporter = .silent) throws {
        self.id = id; self.request = request; self.host = host; self.directory = directory; self.progress = progress
        behaviour = request.mode.behaviour
        try OwnerOnly.directory(directory)
        shared = Mutex(Shared(state: .receiving(Receiving(store: try PageStore(directory: directory + "/pages")))))
    }

    /// A migration a previous daemon journaled, taken over by its successor: `restored`
    /// (held for the source's commit or abort) or already `finished` (so the source can
    /// still read how it ended).
    public init(recovered id: String, request: IncomingMigrationRequest, host: any DestinationHost, directory: String,
                state: State) throws {
        self.id = id; self.request = request; self.host = host; self.directory = directory; progress = .silent
        behaviour = request.mode.behaviour
        try OwnerOnly.directory(directory)
        var initial = Shared(state: state)
        if case .restored(let r) = state { initial.restoringMethod = r.method }
        shared = Mutex(initial)
    }

    public var stateName: String { shared.withLock { $0.state.name } }

    public var isCommitted: Bool {
        shared.withLock {
            switch $0.state {
            case .committed: true
            case .finished(.moved), .finished(.lost): true
            default: false
            }
        }
    }

    /// The restore that takes a new page channel: a lazy one, restored or committed.
    private func reconnectable() -> (any RestoreMethod)? {
        shared.withLock { s in
            switch s.state {
            case .restored(let r), .committed(let r): r.method.kind == .lazy ? r.method : nil
            default: nil
            }
        }
    }

    private func receiving() -> Receiving? {
        shared.withLock { if case .receiving(let r) = $0.state { return r } else { return nil } }
    }

    // MARK: channels

    /// Decides quickly whether `channel` may open now and returns the work to run on the
    /// channel's own thread (which owns the descriptor and closes it when done).
    public func handler(for channel: MigrationChannel) throws -> @Sendable (Int32) -> Void {
        touch()
        // The source reconnects a broken page channel from just before the commit on.
        if channel == .pages, let method = reconnectable() {
            return { fd in
                if !method.reattach(pages: fd) { self.shared.withLock { $0.errors.append("pages: a reconnect came after the session ended") } }
            }
        }
        guard let r = receiving() else {
            throw GodwitError("migration \(id) is \(stateName): no \(channel.rawValue) channel now")
        }
        switch channel {
        case .image:
            return try imageHandler(r)
        case .rsync, .images:
            r.transfers.enter()
            let syncDirectory = host.syncDirectory, images = imagesDirectory
            return { fd in
                defer { self.touch(); r.transfers.leave() }
                do {
                    if channel == .rsync {
                        try FilesystemSync.serve(fd: fd, into: syncDirectory)  // closes fd
                    } else {
                        defer { close(fd) }
                        _ = try ImageTransfer.receive(from: fd, into: images)
                    }
                } catch {
                    self.shared.withLock { $0.errors.append("\(channel.rawValue): \(error)") }
                }
            }
        case .precopy:
            guard behaviour.roundsWhileRunning else {
                throw GodwitError("migration \(id) (\(request.mode.rawValue)) has no pre-copy rounds")
            }
            r.transfers.enter()
            let stage = behaviour.restore == .copy
            let images = imagesDirectory
            return { fd in
                self.shared.withLock { $0.precopyFD = fd }
                defer {
                    self.shared.withLock { $0.precopyFD = nil }
                    close(fd)
                    r.transfers.leave()
                }
                // Rounds, then the final scan's invalidations (and pre-copy's pages), then
                // EOF. Restore waits for this handler, so it sees the store as the freeze left it.
                let receiver = PreCopyReceiver(reader: PageRecordReader(source: FileDescriptorStream(fd: fd, owns: false)), store: r.store)
                do {
                    while let receipt = try receiver.receiveRound() {
                        self.shared.withLock { $0.roundsReceived += 1; $0.lastActivity = DispatchTime.now().uptimeNanoseconds }
                        // A copy restore rebuilds CRIU's pages images from the store while
                        // the container is frozen: allocate their space now, while it runs.
                        guard stage, receipt.dataPages > 0 else { continue }
                        for id in r.store.nsPIDs {
                            let pages = UInt64(r.store.pageCount(nsPID: id))
                            try? ImageRebuilder.prepareStaging(directory: images, id: id,
                                                               bytes: (pages + pages / 20 + 256) * systemPageSize)
                        }
                    }
                } catch {
                    self.shared.withLock { $0.errors.append("precopy: \(error)") }
                }
            }
        case .pages, .push:
            if channel == .push, behaviour.finalDirtySet != .pushed {
                throw GodwitError("migration \(id) (\(request.mode.rawValue)) has no push")
            }
            return { fd in
                let previous = self.shared.withLock { s -> Int32? in
                    if channel == .push { defer { s.pushFD = fd }; return s.pushFD }
                    defer { s.pagesFD = fd }
                    return s.pagesFD
                }
                if let previous { close(previous) }
            }
        }
    }

    /// A channel failed: the restore refuses to run on what it left.
    func failed(_ channel: MigrationChannel, _ error: any Error) {
        shared.withLock { $0.errors.append("\(channel.rawValue): \(error)") }
    }

    /// true the first time only: the image channel fills one fresh staging tree.
    func claimImageChannel() -> Bool { shared.withLock { s in defer { s.imageOpened = true }; return !s.imageOpened } }

    func imageWasInstalled() { shared.withLock { $0.imageInstalled = true } }

    // MARK: activity

    /// The source did something for this migration.
    public func touch() { shared.withLock { $0.lastActivity = DispatchTime.now().uptimeNanoseconds } }

    /// Seconds since the source last did something.
    public var silentSeconds: Double {
        Double(DispatchTime.now().uptimeNanoseconds - shared.withLock { $0.lastActivity }) / 1e9
    }

    // MARK: receiving → restoring → restored

    /// Starts the restore on its own thread and returns at once: a restore that fetches all
    /// of memory over a slow link takes as long as it takes, which no request timeout may
    /// bound. The source follows it with `status()` (phase restoring, then restored or
    /// aborted with the reason).
    public func beginRestore() throws -> IncomingMigrationStatus {
        touch()
        guard receiving() != nil else {
            throw GodwitError("migration \(id) is \(stateName): nothing to restore")
        }
        let started = DispatchSemaphore(value: 0)
        Thread { [self] in
            started.signal()
            _ = try? restore()
        }.start()
        _ = started.wait(timeout: .now() + 5)
        // The state may still read "receiving" for an instant: say what was asked.
        var status = status()
        if status.phase == "receiving" { status.phase = "restoring" }
        return status
    }

    /// Restores from what the channels carried (blocking; beginRestore's thread). The
    /// tasks stay stopped.
    private func restore() throws -> IncomingMigrationStatus {
        let r: Receiving = try shared.withLock { s in
            guard case .receiving(let r) = s.state else { throw GodwitError("migration \(id) is \(s.state.name): nothing to restore") }
            s.state = .restoring(r)
            return r
        }
        do {
            guard r.transfers.wait(timeout: .now() + 120) == .success else {
                throw GodwitError("the filesystem and image transfers did not finish")
            }
            if let failure = shared.withLock({ $0.errors.first }) { throw GodwitError("transfer failed: \(failure)") }
            guard poll(timeout: 30, { self.shared.withLock { $0.pagesFD != nil } }),
                  let fd = shared.withLock({ s -> Int32? in defer { s.pagesFD = nil }; return s.pagesFD }) else {
                throw GodwitError("the source never opened the page channel")
            }
            // A pushed dirty set: the source opened its push right after the final scan.
            var push: Int32?
            if behaviour.finalDirtySet == .pushed {
                _ = poll(timeout: 10) { self.shared.withLock { $0.pushFD != nil } }
                push = shared.withLock { s -> Int32? in defer { s.pushFD = nil }; return s.pushFD }
            }
            let target = try host.restoreTarget(images: imagesDirectory, store: storeDirectory)
            let method = behaviour.restore.method(target: target, store: r.store)
            (method as? LazyRestore)?.wrapUpstream = wrapUpstream
            (method as? LazyRestore)?.graceSeconds = Double(ContainerConfig(request.config).postCopyGraceSeconds)
            // Registered before it runs, so an abort during the restore kills what it made.
            shared.withLock { $0.restoringMethod = method }
            let pid = try method.restore(pages: fd, push: push)
            let restored = Restored(method: method, pid: pid)
            try shared.withLock { s in
                guard case .restoring = s.state else { throw GodwitError("migration \(id) was aborted during the restore") }
                s.state = .restored(restored)
            }
            host.journal(.restored, pid: pid)
            return status()
        } catch {
            let reason = (error as? GodwitError)?.message ?? "\(error)"
            Task { await self.abort(reason: "restore failed: \(reason)") }
            throw GodwitError("restore on \(host.hostName) failed: \(reason)",
                              hint: "the CRIU log is kept in \(imagesDirectory)/restore.log on \(host.hostName) until the next move")
        }
    }


    // MARK: restored → committed

    /// The source's tasks are doomed: run the container here.
    public func commit() throws -> IncomingMigrationStatus {
        let restored: Restored = try shared.withLock { s in
            switch s.state {
            case .restored(let r):
                s.state = .committed(r)
                return r
            case .committed, .finished(.moved):
                throw CommitRepeated()
            default:
                throw GodwitError("migration \(id) is \(s.state.name): nothing restored to commit")
            }
        }
        // Lazy and local-lazy: the tasks run before all their pages are in them.
        let lazy = restored.method.kind != .copy
        // Before the tasks run: a daemon that dies from here on leaves a successor that
        // runs this copy (the source's tasks are doomed) instead of removing it.
        host.journal(.committing, pid: restored.pid)
        if lazy { host.pagesPending(true) }
        do {
            try restored.method.commit()
        } catch {
            // The source's tasks are doomed already: this copy was the only one.
            restored.method.abort()
            let why = "the commit failed on \(host.hostName): \((error as? GodwitError)?.message ?? "\(error)")"
            host.markLost(why)
            if lazy { host.pagesPending(false) }
            end(.lost(why))
            throw GodwitError(why)
        }
        let ranAt = DispatchTime.now().uptimeNanoseconds
        // The tasks run: tell the segment before the bookkeeping (records, limits), so
        // clients find the container here as soon as it can answer.
        let proxy = (restored.method as? LazyRestore)?.pageProxy
        proxy?.mark("announcing")
        host.announce(pid: restored.pid)
        proxy?.mark("announced")
        adoptKeepingItRunning(pid: restored.pid)
        afterCommit?(restored.method)
        if restored.method.kind == .copy {
            end(.moved)
        } else {
            Task.detached { [self] in
                // Lazy: the pages still on the source arrive now; then the move is done.
                let figures = await blocking { restored.method.waitUntilLocal(timeout: self.allLocalTimeout) }
                if let lost = figures.lost {
                    host.markLost(lost)
                    host.pagesPending(false)
                    end(.lost(lost))
                } else {
                    host.pagesPending(false)
                    end(.moved)
                }
            }
        }
        var answer = status()
        answer.runningForMillis = Double(DispatchTime.now().uptimeNanoseconds - ranAt) / 1e6
        return answer
    }

    /// A source daemon that restarted during a lazy move's background transfer: its CRIU
    /// page server went with it, so the pages still missing here will never come. Ends the
    /// wait at once as lost (instead of after the link's grace period). Nothing to do in
    /// any other state: before the commit the source rolls back with `abort`.
    public func sourceLost(reason: String) -> IncomingMigrationStatus {
        touch()
        let method: (any RestoreMethod)? = shared.withLock { s in
            if case .committed(let r) = s.state { return r.method }
            return nil
        }
        (method as? LazyRestore)?.sourceGone("the source lost its page server: \(reason)")
        return status()
    }

    /// Records the running container (row, limits). Once its tasks run it is the only copy
    /// (the source's are doomed), so a failure here must not kill it: a full disk (found by
    /// the fault matrix: commit × dst-disk-full) is retried every 5 s until the record can
    /// be written, and a restarted daemon finds the tasks running and adopts them
    /// (MoveRecovery.incoming).
    private func adoptKeepingItRunning(pid: pid_t) {
        // The host says why it failed (its log); here it is only retried.
        if (try? host.adopt(pid: pid)) != nil { return }
        let host = host
        Task.detached {
            while true {
                try? await Task.sleep(for: .seconds(5))
                if (try? host.adopt(pid: pid)) != nil { return }
                // Gone (killed, or it exited): nothing left to record as running.
                if kill(pid, 0) != 0 { return }
            }
        }
    }

    /// A commit that already happened answers with the status, not an error.
    struct CommitRepeated: Error {}

    public func commitIdempotent() throws -> IncomingMigrationStatus {
        touch()
        do { return try commit() } catch is CommitRepeated { return status() }
    }

    // MARK: → rolledBack

    /// Kills whatever was restored and removes the container: nothing stays. Refused (false)
    /// once committed: the destination then holds the only copy.
    @discardableResult
    public func abort(reason: String) async -> Bool {
        let taken: (Receiving?, (any RestoreMethod)?)? = shared.withLock { s in
            switch s.state {
            case .receiving(let r), .restoring(let r):
                s.state = .finished(.rolledBack(reason))
                return (r, s.restoringMethod)
            case .restored(let restored):
                s.state = .finished(.rolledBack(reason))
                return (nil, restored.method)
            case .committed, .finished:
                return nil
            }
        }
        guard let (receiving, method) = taken else { return false }
        method?.abort()
        if let r = receiving {
            let (pages, push, precopy) = shared.withLock { s -> (Int32?, Int32?, Int32?) in
                defer { s.pagesFD = nil; s.pushFD = nil }
                return (s.pagesFD, s.pushFD, s.precopyFD)
            }
            if let pages { close(pages) }
            if let push { close(push) }
            // Stop a pre-copy receiver still writing into the store before the store goes.
            if let precopy { shutdown(precopy, Int32(SHUT_RDWR)) }
            if method == nil {
                _ = await blocking { r.transfers.wait(timeout: .now() + 30) == .success }
                r.store.destroy()
            }
        }
        host.journal(nil, pid: 0)
        await host.discard()
        onFinish?(.rolledBack(reason))
        return true
    }

    private func end(_ outcome: Outcome) {
        shared.withLock { $0.state = .finished(outcome) }
        host.journal(nil, pid: 0)
        onFinish?(outcome)
        // Kept after a failed restore for the post-mortem (the daemon clears it at start).
        if case .rolledBack = outcome { return }
        try? FileManager.default.removeItem(atPath: directory)
    }

    // MARK: status

    public func status() -> IncomingMigrationStatus {
        let (name, method, rounds) = shared.withLock { ($0.state.name, $0.restoringMethod, $0.roundsReceived) }
        let kind = behaviour.restore
        let figures = method?.figures ?? IncomingFigures()
        var status = IncomingMigrationStatus(id: id, phase: name, pid: method?.restoredPID, fetchMillis: figures.fetchMillis,
                                             rebuildMillis: figures.rebuildMillis, restoreMillis: figures.restoreMillis,
                                             pagesFetched: figures.pagesFetched,
                                             allLocalAfterCommitMillis: figures.allLocalAfterCommitMillis, lost: figures.lost)
        status.roundsReceived = rounds
        if shared.withLock({ $0.imageInstalled }) { status.imageInstalled = true }
        status.lazyPages = figures.lazyPages
        status.pagesFromStore = figures.pagesFromStore
        if kind != .copy {
            status.pagesServedLocally = figures.pagesServedLocally
            status.pagesPushed = figures.pagesPushed
            status.pagesFetchedOnFault = figures.pagesFetchedOnFault
            status.pagesFetchedTwice = figures.pagesFetchedTwice
            status.pagesRequestedTwice = figures.pagesRequestedTwice
        }
        if case .committed = shared.withLock({ $0.state }) { status.link = method?.linkDown }
        switch outcome {
        case .lost(let why)?: status.lost = status.lost ?? why
        case .rolledBack(let why)?: status.reason = why
        default: break
        }
        return status
    }

    /// What the restore measured so far (nil before it started).
    public var figures: IncomingFigures? { shared.withLock { $0.restoringMethod }?.figures }

    public var outcome: Outcome? {
        shared.withLock { if case .finished(let o) = $0.state { return o } else { return nil } }
    }
}
