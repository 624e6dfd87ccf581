import Checkpoint
import Foundation
import GodwitCore
import Memory

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
    /// Copy restores: lazy pages the pre-copy page store already held.
    public var pagesFromStore = 0
    /// Hybrid: pages the source pushed after the freeze.
    public var pagesPushed = 0
    /// Set when the container was lost after the commit (post-copy only).
    public var lost: String?
    public var notes: [String] = []
    public init() {}
}

/// The destination's half of a move. The source's lazy dump keeps the container frozen
/// and serves its memory through a page channel; this side either fetches every page the
/// page store lacks and restores normally (stop-and-copy: the store is empty; pre-copy:
/// it holds the rounds minus the final scan's invalidations), or restores at once with
/// `criu lazy-pages` behind a LazyPageProxy that serves from the store and fetches the rest
/// on fault (post-copy: empty store; hybrid: pre-filled, plus the source's background push).
/// Either way the restored tasks stay stopped until `commit()`, which the source calls
/// only after it has doomed its own tasks: never two running copies.
public final class IncomingRestore: @unchecked Sendable {
    public enum Mode: String, Sendable { case copy, lazy }

    public let mode: Mode
    public let target: IncomingTarget
    private let lock = NSLock()
    private var client: PageServerClient?
    private var proxy: LazyPageProxy?
    private var daemon: LazyPagesDaemon?
    private let store: PageStore
    private var pushFD: Int32 = -1
    private let pushDone = DispatchGroup()
    private var committedAt: UInt64?
    private var finished = false
    public private(set) var restoredPID: pid_t?
    private var figuresValue = IncomingFigures()
    public var figures: IncomingFigures { lock.lock(); defer { lock.unlock() }; return figuresValue }

    /// `store`: the migration's page store (empty unless pre-copy rounds filled it).
    public init(mode: Mode, target: IncomingTarget, store: PageStore) {
        self.mode = mode
        self.target = target
        self.store = store
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }
    private static func millis(since t: UInt64) -> Double { Double(now() - t) / 1e6 }

    /// Restores from the images already received plus the page channel `pages` (owned from
    /// now on), and in lazy mode the source's push channel `push` (PageRecords of the pages
    /// the final scan found dirty, read from the frozen source; owned from now on). Returns
    /// the restored init's host pid; its tasks are stopped.
    public func restore(pages fd: Int32, push: Int32? = nil) throws -> pid_t {
        let store = self.store
        if let push { lock.lock(); pushFD = push; lock.unlock() }
        let images = target.restore.imagesDirectory
        var options = target.restore
        options.leaveStopped = true
        switch mode {
        case .copy:
            var t = Self.now()
            let client = PageServerClient(connected: fd, peer: "source")
            self.client = client
            let rebuilder = ImageRebuilder(directory: images)
            // Only what the store lacks: unchanged pre-copied pages are not sent twice.
            // No bridging (1): across hosts the GETs are pipelined, and at stride 4 bridging
            // would fetch every page of a dirty region instead of the quarter that changed.
            let plan = try FinalPhase.missingPages(rebuilder.lazyEntries(), store: store, bridge: 1)
            try client.fetch(plan.requests) { id, vaddr, pages, bytes in
                try store.store(nsPID: id, vaddr: vaddr, count: pages, data: bytes)
            }
            update {
                $0.fetchMillis = Self.millis(since: t); $0.pagesFetched = client.pagesFetched; $0.lazyPages = plan.lazyPages
                $0.pagesFromStore = plan.lazyPages - plan.missingPages
            }
            t = Self.now()
            _ = try rebuilder.rebuild { id, vaddr, pages, buffer in
                let held = try store.read(nsPID: id, vaddr: vaddr, count: pages, into: buffer)
                if held.contains(false) {
                    throw GodwitError("page \(id):0x\(String(vaddr, radix: 16)) did not arrive from the source")
                }
            }
            // The rebuilt images hold the memory now; the store's copy can go.
            store.destroy()
            ImageRebuilder.removeStaging(directory: images)
            update { $0.rebuildMillis = Self.millis(since: t) }
        case .lazy:
            let t = Self.now()
            let proxy = try LazyPageProxy(store: store, upstream: TCPPageServerUpstream(connected: fd))
            // Each round trip through the daemons' channel is slow next to CRIU's own TCP:
            // fetch 1 MiB per background GET instead of lazy-pages' 64 KiB.
            proxy.readAheadPages = LazyPageProxy.remoteReadAheadPages
            proxy.faultReadAheadPages = LazyPageProxy.remoteFaultReadAheadPages
            let lazy = try ImageRebuilder(directory: images).lazyEntries()
            proxy.lazyRuns = Dictionary(lazy.map { item in
                (item.id, item.entries.map { $0.vaddr..<($0.vaddr + UInt64($0.pages) * systemPageSize) }.sorted { $0.lowerBound < $1.lowerBound })
            }, uniquingKeysWith: { a, _ in a })
            // CLOSE would let the source's dump complete (killing the source): not before
            // the source has doomed its tasks and called commit().
            proxy.holdClose()
            proxy.start()
            self.proxy = proxy
            if let push { startPush(push, into: proxy) }
            var lazyPages = 0
            for (_, entries) in lazy { lazyPages += entries.reduce(0) { $0 + $1.pages } }
            update { $0.lazyPages = lazyPages }
            let daemon = try LazyPagesDaemon(criu: target.criu, address: PageServerAddress(address: "127.0.0.1", port: proxy.port),
                                             directory: images)
            self.daemon = daemon
            try daemon.waitUntilReady()
            update { $0.lazyDaemonMillis = Self.millis(since: t) }
            options.lazyPages = true
        }
        let t = Self.now()
        let (pid, _) = try target.criu.restore(options)
        restoredPID = pid
        update { $0.restoreMillis = Self.millis(since: t) }
        if case .failed(let why)? = proxy?.wait(timeout: 0) { throw GodwitError("the page channel failed: \(why)") }
        guard TrackedProcess.of(hostPID: pid) != nil else {
            throw GodwitError("the restored container's init (pid \(pid)) is not there")
        }
        return pid
    }

    /// The source's tasks are doomed: run. Stop-and-copy sends CLOSE (the source's dump
    /// completes); post-copy lets lazy-pages' CLOSE through once every page is here.
    public func commit() throws {
        committedAt = Self.now()
        proxy?.releaseClose()
        // CRIU restores the freezer state it found at dump time (FROZEN: CRIU froze it).
        try target.cgroup.thaw()
        for task in ContainerProcesses.hostPIDs(cgroupDirectories: target.cgroup.directories) { kill(task, SIGCONT) }
        if let client {
            // The destination runs either way: the source's tasks are already doomed, so a
            // failed CLOSE only means the source's dump ends in an error. In the background:
            // CRIU's answer to CLOSE was seen to take a minute under load, and the commit
            // call must not time out (the source would report the container lost).
            self.client = nil
            let thread = Thread { [self] in
                do { _ = try client.close() } catch { update { $0.notes.append("CLOSE to the source failed: \(error)") } }
            }
            thread.stackSize = 1 << 20
            thread.start()
        }
    }

    /// Post-copy: waits until every page is local (or the session failed, which loses the
    /// container: its tasks are killed before lazy-pages goes, so they never see zero pages).
    /// Stop-and-copy returns at once.
    @discardableResult
    public func waitUntilLocal(timeout: TimeInterval) -> IncomingFigures {
        guard let proxy else { return figures }
        let outcome = proxy.wait(timeout: timeout)
        let stats = proxy.statistics
        update {
            $0.pagesServedLocally = stats.pagesServedLocally
            $0.pagesFetchedOnFault = stats.pagesFetched
            $0.pagesFetchedTwice = stats.pagesFetchedTwice
            $0.pagesRequestedTwice = stats.pagesRequestedTwice
        }
        switch outcome {
        case .completed?:
            if let at = proxy.completedAt, let committedAt, at > committedAt {
                update { $0.allLocalAfterCommitMillis = Double(at - committedAt) / 1e6 }
            } else {
                update { $0.allLocalAfterCommitMillis = 0 }
            }
            if daemon?.waitForExit(timeout: 30) == nil { daemon?.kill() }
        case .failed(let why)?:
            lose(why)
        case nil:
            lose("not every page arrived within \(Int(timeout)) s")
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
        lock.lock(); let fd = pushFD; lock.unlock()
        guard fd >= 0 else { return }
        shutdown(fd, Int32(SHUT_RDWR))
        _ = pushDone.wait(timeout: .now() + 10)
        lock.lock(); pushFD = -1; lock.unlock()
        close(fd)
    }

    private func lose(_ why: String) {
        update { $0.lost = why }
        try? target.cgroup.kill()
        daemon?.kill()
        try? target.cgroup.remove()
    }

    /// Before the commit: kill what was restored and fail the page session (the source
    /// resumes). Idempotent.
    public func abort() {
        lock.lock()
        if finished { lock.unlock(); return }
        finished = true
        lock.unlock()
        try? target.cgroup.kill()
        daemon?.kill()
        try? target.cgroup.remove()
        client?.abandon()
        proxy?.stop()
        endPush()
        store.destroy()
    }

    private func update(_ change: (inout IncomingFigures) -> Void) {
        lock.lock(); change(&figuresValue); lock.unlock()
    }
}
