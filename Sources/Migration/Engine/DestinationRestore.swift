import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

/// Where an incoming container is restored: CRIU, the restore flags (images directory,
/// rootfs, veth on this host's bridge, cgroup root), the cgroup it lands in, and a
/// directory for the page store.
public struct IncomingTarget: Sendable {
    public var criu: CRIU
    public var restore: RestoreOptions
    public var cgroup: Cgroup
    public var storeDirectory: String

    public init(criu: CRIU, restore: RestoreOptions, cgroup: Cgroup, storeDirectory: String) {
        self.criu = criu; self.restore = restore; self.cgroup = cgroup; self.storeDirectory = storeDirectory
    }
}

/// What the destination measured.
public struct IncomingFigures: Codable, Sendable {
    public var fetchMillis = 0.0
    public var rebuildMillis = 0.0
    public var lazyDaemonMillis = 0.0
    public var restoreMillis = 0.0
    public var pagesFetched = 0
    public var lazyPages = 0
    /// Post-copy: from the commit until every page was local.
    public var allLocalAfterCommitMillis: Double?
    public var pagesServedLocally = 0
    public var pagesFetchedOnFault = 0
    public var pagesFetchedTwice = 0
    public var pagesRequestedTwice = 0
    /// Pages lazy-pages asked the proxy for (each once: = lazyPages when all arrived).
    public var pagesRequested = 0
    /// Copy restores: pages the dump itself held (not lazy), after the rebuild.
    public var presentPagesInDump = 0
    /// Copy restores: lazy pages the pre-copy page store already held.
    public var pagesFromStore = 0
    /// Hybrid: pages the source pushed after the freeze.
    public var pagesPushed = 0
    /// Post-copy: how often the source reconnected a broken page channel.
    public var pageReconnects = 0
    /// Set when the container was lost after the commit (post-copy only).
    public var lost: String?
    public var notes: [String] = []
    public init() {}
}

/// How the destination turns the frozen source's memory into a restored container: the
/// one place the copy and lazy strategies differ on this side. Either way the restored
/// tasks stay stopped until `commit()`, which the source calls only after it has doomed
/// its own tasks: never two running copies.
///
/// Concurrency model: `restore`, `commit`, `waitUntilLocal` and `abort` may come from
/// different threads (the daemon's routes, the abandon timer); each implementation keeps
/// its mutable state behind one lock, and `abort` is idempotent.
public protocol RestoreMethod: AnyObject, Sendable {
    var kind: RestoreKind { get }
    var figures: IncomingFigures { get }
    var restoredPID: pid_t? { get }
    /// Restores from the images already received plus the page channel `pages` (owned from
    /// now on) and, for a pushed final dirty set, the push channel (owned from now on).
    /// Returns the restored init's host pid; its tasks are stopped.
    func restore(pages: Int32, push: Int32?) throws -> pid_t
    /// The source's tasks are doomed: run.
    func commit() throws
    /// Waits until every page is local (or the session failed: the container is lost).
    @discardableResult func waitUntilLocal(timeout: TimeInterval) -> IncomingFigures
    /// Before the commit: kill what was restored and fail the page session (the source
    /// resumes). Idempotent.
    func abort()
    /// A new page channel from the source after the old one broke (owned from now on);
    /// false if this restore can't take it.
    func reattach(pages: Int32) -> Bool
    /// While the page channel is down and the hosts wait for it: what to tell the user.
    var linkDown: String? { get }
}

extension RestoreMethod {
    public func reattach(pages: Int32) -> Bool { close(pages); return false }
    public var linkDown: String? { nil }
}

extension RestoreKind {
    public func method(target: IncomingTarget, store: PageStore) -> any RestoreMethod {
        switch self {
        case .copy: CopyRestore(target: target, store: store)
        case .lazy: LazyRestore(target: target, store: store)
        case .localLazy: LocalLazyRestore(target: target, store: store)
        }
    }
}

/// Shared bookkeeping of both restore methods: figures, the restored pid, the stopped
/// tasks' release, and the one-shot abort.
///
/// Concurrency model: what changes is in `record` (a Mutex) and in each subclass's own
/// Mutex. Unchecked only for `store`, a plain class: the restore thread uses it alone until
/// it starts the proxy, which then serialises every access under its own lock.
public class RestoreBase: @unchecked Sendable {
    public let target: IncomingTarget
    let store: PageStore

    private struct Record {
        var finished = false
        var committedAt: UInt64?
        var figures = IncomingFigures()
        var pid: pid_t?
    }
    private let record = Mutex(Record())

    init(target: IncomingTarget, store: PageStore) {
        self.target = target
        self.store = store
    }

    public var figures: IncomingFigures { record.withLock { $0.figures } }
    public var restoredPID: pid_t? { record.withLock { $0.pid } }
    var committedAt: UInt64? { record.withLock { $0.committedAt } }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
    static func millis(since t: UInt64) -> Double { Double(now() - t) / 1e6 }

    func update(_ change: (inout IncomingFigures) -> Void) { record.withLock { change(&$0.figures) } }

    /// CRIU restore with the tasks left stopped; checks the init is there.
    func runRestore(_ options: RestoreOptions) throws -> pid_t {
        var options = options
        options.leaveStopped = true
        let t = Self.now()
        let (pid, _) = try target.criu.restore(options)
        record.withLock { $0.pid = pid }
        update { $0.restoreMillis = Self.millis(since: t) }
        return pid
    }

    func checkRestored(_ pid: pid_t) throws {
        guard TrackedProcess.of(hostPID: pid) != nil else {
            throw GodwitError("the restored container's init (pid \(pid)) is not there")
        }
    }

    /// CRIU restores the freezer state it found at dump time (FROZEN: CRIU froze it).
    func release() throws {
        record.withLock { $0.committedAt = Self.now() }
        try target.cgroup.thaw()
        for task in ContainerProcesses.hostPIDs(cgroupDirectories: target.cgroup.directories) { kill(task, SIGCONT) }
    }

    /// True the first time only.
    func finishOnce() -> Bool {
        record.withLock {
            if $0.finished { return false }
            $0.finished = true
            return true
        }
    }

    func killRestored() {
        try? target.cgroup.kill()
    }

    /// Copies from the frozen source every lazy page the store lacks: afterwards the store
    /// holds all of the container's memory.
    func fetchMissing(from client: PageServerClient, lazyEntries: [(id: Int32, entries: [PagemapEntry])]) throws {
        let t = Self.now()
        // Only what the store lacks: unchanged pre-copied pages are not sent twice. No
        // bridging (1): across hosts the GETs are pipelined, and at stride 4 bridging would
        // fetch every page of a dirty region instead of the quarter that changed.
        let plan = CopyRestore.missingPages(lazyEntries, store: store, bridge: 1)
        let store = self.store
        try client.fetch(plan.requests) { id, vaddr, pages, bytes in
            try store.store(nsPID: id, vaddr: vaddr, count: pages, data: bytes)
        }
        update {
            $0.fetchMillis = Self.millis(since: t); $0.pagesFetched = client.pagesFetched; $0.lazyPages = plan.lazyPages
            $0.pagesFromStore = plan.lazyPages - plan.missingPages
        }
    }

    /// After the commit of a restore that holds every page: the source's dump may end.
    /// The destination runs either way: the source's tasks are already doomed, so a
    /// failed CLOSE only means the source's dump ends in an error. In the background:
    /// CRIU's answer to CLOSE was seen to take a minute under load, and the commit call
    /// must not time out (the source would report the container lost).
    func closeSource(_ handed: HandOff<PageServerClient>) {
        let thread = Thread { [self] in
            do { _ = try handed.value.close() } catch { update { $0.notes.append("CLOSE to the source failed: \(error)") } }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }
}

/// Stop-and-copy: fetch every page the store lacks from the frozen source, rebuild CRIU's
/// images, restore normally (eager: after the restore nothing depends on this daemon). When the tasks run, nothing is left on the
/// source; CLOSE then lets the source's dump complete.
public final class CopyRestore: RestoreBase, RestoreMethod, @unchecked Sendable {
    public var kind: RestoreKind { .copy }
    /// The page-server session with the source, until CLOSE (commit) or abandon (abort).
    private let client = Mutex<HandOff<PageServerClient>?>(nil)

    public func restore(pages fd: Int32, push: Int32?) throws -> pid_t {
        if let push { close(push) }
        let images = target.restore.imagesDirectory
        let client = PageServerClient(connected: fd, peer: "source")
        self.client.withLock { $0 = HandOff(client) }
        let rebuilder = ImageRebuilder(directory: images)
        try fetchMissing(from: client, lazyEntries: rebuilder.lazyEntries())
        let store = self.store
        let t = Self.now()
        let rebuilt = try rebuilder.rebuild { id, vaddr, pages, buffer in
            let held = try store.read(nsPID: id, vaddr: vaddr, count: pages, into: buffer)
            if held.contains(false) {
                throw GodwitError("page \(id):0x\(String(vaddr, radix: 16)) did not arrive from the source")
            }
        }
        // The rebuilt images hold the memory now; the store's copy can go.
        store.destroy()
        ImageRebuilder.removeStaging(directory: images)
        update { $0.rebuildMillis = Self.millis(since: t); $0.presentPagesInDump = rebuilt.presentPages }
        let pid = try runRestore(target.restore)
        try checkRestored(pid)
        return pid
    }

    public func commit() throws {
        try release()
        guard let handed = client.withLock({ c -> HandOff<PageServerClient>? in defer { c = nil }; return c }) else { return }
        closeSource(handed)
    }


    public func waitUntilLocal(timeout: TimeInterval) -> IncomingFigures { figures }

    public func abort() {
        guard finishOnce() else { return }
        killRestored()
        try? target.cgroup.remove()
        client.withLock { $0 }?.value.abandon()
        store.destroy()
    }

    /// What to fetch from the frozen source: for each lazy pagemap entry, the runs of pages
    /// `store` lacks (dirtied after they were sent, or never sent). Runs less than `bridge`
    /// pages apart are fetched as one GET (the pages between are re-sent by the frozen
    /// source: harmless). Never across entries: the source only serves addresses inside its
    /// lazy entries. An empty store asks for everything (stop-and-copy).
    public static func missingPages(_ lazyEntries: [(id: Int32, entries: [PagemapEntry])], store: PageStore, bridge: Int)
        -> (requests: [PageServerClient.Request], lazyPages: Int, missingPages: Int)
    {
        let pageSize = systemPageSize
        var requests: [PageServerClient.Request] = []
        var lazyPages = 0, missing = 0
        for (id, entries) in lazyEntries {
            for entry in entries {
                lazyPages += entry.pages
                var runs: [(start: Int, end: Int)] = []
                for i in 0..<entry.pages where !store.contains(nsPID: id, vaddr: entry.vaddr + UInt64(i) * pageSize) {
                    missing += 1
                    if let last = runs.last, i - last.end < bridge {
                        runs[runs.count - 1].end = i + 1
                    } else {
                        runs.append((i, i + 1))
                    }
                }
                for run in runs {
                    requests.append(.init(nsPID: id, vaddr: entry.vaddr + UInt64(run.start) * pageSize, pages: run.end - run.start))
                }
            }
        }
        return (requests, lazyPages, missing)
    }
}

/// Post-copy and hybrid: restore at once with `criu lazy-pages` behind a LazyPageProxy that
/// serves from the store and fetches the rest on fault (post-copy: empty store; hybrid:
/// pre-filled, plus the source's background push).
public final class LazyRestore: RestoreBase, RestoreMethod, @unchecked Sendable {
    public var kind: RestoreKind { .lazy }

    private struct Parts {
        var proxy: LazyPageProxy?
        var daemon: LazyPagesDaemon?
        var pushFD: Int32 = -1
        /// Tests: wraps the upstream (e.g. to slow it down).
        var wrapUpstream: (@Sendable (LazyPageUpstream) -> LazyPageUpstream)?
        /// How long a broken page channel may stay down (migration.postcopy.grace).
        var graceSeconds = 180.0
    }
    /// What the restore started, for the commit, the wait and the abort.
    private let parts = Mutex(Parts())

    var wrapUpstream: (@Sendable (LazyPageUpstream) -> LazyPageUpstream)? {
        get { parts.withLock { $0.wrapUpstream } }
        set { parts.withLock { $0.wrapUpstream = newValue } }
    }
    var graceSeconds: Double {
        get { parts.withLock { $0.graceSeconds } }
        set { parts.withLock { $0.graceSeconds = newValue } }
    }
    /// The proxy, once the restore started it (tests cut its link).
    var pageProxy: LazyPageProxy? { parts.withLock { $0.proxy } }
    private var proxy: LazyPageProxy? { parts.withLock { $0.proxy } }

    /// After the commit: the source says its page server is gone; the wait for the rest
    /// of memory ends as lost (the tasks are killed before they can read missing pages).
    public func sourceGone(_ why: String) { proxy?.sourceGone(why) }
    private var daemon: LazyPagesDaemon? { parts.withLock { $0.daemon } }
    private let pushDone = DispatchGroup()

    public func restore(pages fd: Int32, push: Int32?) throws -> pid_t {
        let upstream: LazyPageUpstream = TCPPageServerUpstream(connected: fd)
        return try restore(upstream: wrapUpstream?(upstream) ?? upstream, push: push, fromSource: true)
    }

    /// `fromSource`: the upstream is the source's page server, whose channel may break and
    /// come back; otherwise it is the local store alone (LocalLazyRestore).
    /// `lazy`: the dump's lazy pagemap entries, when the caller read them already.
    func restore(upstream: LazyPageUpstream, push: Int32?, fromSource: Bool,
                 lazy known: [(id: Int32, entries: [PagemapEntry])]? = nil) throws -> pid_t {
        if let push { parts.withLock { $0.pushFD = push } }
        let images = target.restore.imagesDirectory
        let t = Self.now()
        let proxy = try LazyPageProxy(store: store, upstream: upstream)
        // The source reconnects a page channel that broke (once it doomed its tasks, the
        // only way on): the faulting threads wait that long for it.
        if fromSource { proxy.keepAcrossBreaks(graceSeconds: graceSeconds) }
        // Each round trip through the daemons' channel is slow next to CRIU's own TCP:
        // fetch 1 MiB per background GET instead of lazy-pages' 64 KiB.
        proxy.readAheadPages = LazyPageProxy.remoteReadAheadPages
        proxy.faultReadAheadPages = LazyPageProxy.remoteFaultReadAheadPages
        // Post-copy: the proxy's own pipelined walk moves the memory (from now, before the
        // restore even runs), smallest process first. Hybrid: no walk, the source pushes
        // what the store lacks, and a walk would fetch the same pages again.
        if push == nil && fromSource {
            proxy.backgroundWindowPages = LazyPageProxy.remoteBackgroundWindowPages
            proxy.backgroundChunkPages = LazyPageProxy.remoteBackgroundChunkPages
        }
        let lazy = try known ?? ImageRebuilder(directory: images).lazyEntries()
        proxy.lazyRuns = Dictionary(lazy.map { item in
            (item.id, item.entries.map { $0.vaddr..<($0.vaddr + UInt64($0.pages) * systemPageSize) }.sorted { $0.lowerBound < $1.lowerBound })
        }, uniquingKeysWith: { a, _ in a })
        // CLOSE would let the source's dump complete (killing the source): not before the
        // source has doomed its tasks and called commit().
        if fromSource { proxy.holdClose() }
        proxy.start()
        parts.withLock { $0.proxy = proxy }
        if let push { startPush(push, into: proxy) }
        var lazyPages = 0
        for (_, entries) in lazy { lazyPages += entries.reduce(0) { $0 + $1.pages } }
        update { $0.lazyPages = lazyPages }
        // lazy-pages gets its end of a connection to the proxy made here (nobody else can
        // reach the proxy); it runs in this network namespace, whatever the restore needs.
        var local = target.criu
        local.launcher = []
        let end = proxy.takeLazyPagesEnd()
        defer { if end >= 0 { close(end) } }
        let daemon = try LazyPagesDaemon(criu: local, pageServerSocket: end, directory: images)
        parts.withLock { $0.daemon = daemon }
        try daemon.waitUntilReady()
        update { $0.lazyDaemonMillis = Self.millis(since: t) }
        var options = target.restore
        options.lazyPages = true
        let pid = try runRestore(options)
        if case .failed(let why)? = proxy.wait(timeout: 0) { throw GodwitError("the page channel failed: \(why)") }
        try checkRestored(pid)
        return pid
    }

    public func reattach(pages fd: Int32) -> Bool {
        guard let proxy else { close(fd); return false }
        let upstream: LazyPageUpstream = TCPPageServerUpstream(connected: fd)
        return proxy.reattach(wrapUpstream?(upstream) ?? upstream)
    }

    public var linkDown: String? {
        guard let proxy, let down = proxy.linkDown else { return nil }
        return "waiting for the link: the page channel to the source is down since \(Int(down.seconds)) s "
            + "(grace \(Int(proxy.graceSeconds)) s): \(down.reason)"
    }

    /// Lets lazy-pages' CLOSE through once every page is here.
    public func commit() throws {
        let proxy = proxy
        // A page channel that broke before the commit means CRIU already gave up on the
        // session: the tasks must not run on pages that will never come.
        if let why = proxy?.upstreamFailure { throw GodwitError("the page channel broke before the commit: \(why)") }
        proxy?.releaseClose()
        proxy?.mark("commit: thawing")
        try release()
        proxy?.mark("commit: tasks run")
    }

    /// Waits until every page is local (or the session failed, which loses the container:
    /// its tasks are killed before lazy-pages goes, so they never see zero pages).
    public func waitUntilLocal(timeout: TimeInterval) -> IncomingFigures {
        guard let proxy = proxy else { return figures }
        // `timeout` bounds silence, not the transfer: as long as pages keep arriving (or
        // being served), the wait goes on.
        var outcome = proxy.wait(timeout: min(timeout, 5))
        var lastCount = -1
        var lastProgress = DispatchTime.now().uptimeNanoseconds
        while outcome == nil {
            let stats = proxy.statistics
            let count = stats.pagesFetched + stats.pagesServedLocally
            // A link that is down is the proxy's own wait (its grace), not silence.
            if count != lastCount || proxy.linkDown != nil {
                lastCount = count
                lastProgress = DispatchTime.now().uptimeNanoseconds
            } else if Double(DispatchTime.now().uptimeNanoseconds - lastProgress) / 1e9 > timeout {
                break
            }
            outcome = proxy.wait(timeout: min(timeout, 5))
        }
        let stats = proxy.statistics
        update {
            $0.pagesServedLocally = stats.pagesServedLocally
            $0.pagesFetchedOnFault = stats.pagesFetched
            $0.pagesFetchedTwice = stats.pagesFetchedTwice
            $0.pagesRequestedTwice = stats.pagesRequestedTwice
            $0.pagesRequested = stats.pagesRequested
            $0.pageReconnects = proxy.reconnects
        }
        let daemon = daemon
        switch outcome {
        case .completed?:
            let committedAt = committedAt
            if let at = proxy.completedAt, let committedAt, at > committedAt {
                update { $0.allLocalAfterCommitMillis = Double(at - committedAt) / 1e6 }
            } else {
                update { $0.allLocalAfterCommitMillis = 0 }
            }
            if daemon?.waitForExit(timeout: 30) == nil { daemon?.kill() }
        case .failed(let why)?:
            lose(why)
        case nil:
            lose("no page arrived for \(Int(timeout)) s")
        }
        proxy.stop()
        endPush()
        store.destroy()
        return figures
    }

    /// Hybrid: applies the source's push (PageRecords) to the proxy's store as it arrives,
    /// so that most faults find their page local. A failed push only means more faults.
    private func startPush(_ fd: Int32, into proxy: LazyPageProxy) {
        pushDone.enter()
        let thread = Thread { [self] in
            defer { pushDone.leave() }
            let reader = PageRecordReader(source: FileDescriptorStream(fd: fd, owns: false))
            do {
                while let record = try reader.next() {
                    let n = try proxy.apply(record)
                    update { $0.pagesPushed += n }
                }
            } catch {
                update { $0.notes.append("the push from the source stopped: \(error)") }
            }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    private func endPush() {
        let fd = parts.withLock { $0.pushFD }
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        _ = pushDone.wait(timeout: .now() + 10)
        parts.withLock { $0.pushFD = -1 }
        close(fd)
    }

    private func lose(_ why: String) {
        update { $0.lost = why }
        killRestored()
        daemon?.kill()
        try? target.cgroup.remove()
    }

    public func abort() {
        guard finishOnce() else { return }
        killRestored()
        daemon?.kill()
        try? target.cgroup.remove()
        proxy?.stop()
        endPush()
        store.destroy()
    }
}
