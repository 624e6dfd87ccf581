import Checkpoint
import Foundation
import GodwitCore
import Memory

/// Post-copy (CRIU lazy pages) or hybrid (pre-copy, then lazy restore served from the
/// page store).
public enum LazyMode: String, Sendable {
    case postCopy = "post-copy"
    case hybrid
}

/// What a lazy migration did and where its time went.
public struct LazyMigrationReport: Sendable, CustomStringConvertible {
    public var mode: LazyMode
    /// Start of `criu dump --lazy-pages` (CRIU freezes first) to its page server listening.
    public var dumpNanos: UInt64 = 0
    public var finalScanNanos: UInt64 = 0
    public var imageCopyNanos: UInt64 = 0
    /// Starting `criu lazy-pages` until its socket exists.
    public var lazyDaemonNanos: UInt64 = 0
    public var restoreNanos: UInt64 = 0
    /// Waiting for the background push to finish before the commit (hybrid).
    public var pushWaitNanos: UInt64 = 0
    /// Killing the source tasks (the commit).
    public var commitNanos: UInt64 = 0
    /// Freeze to the destination running (SIGCONT), minus caller hooks.
    public var frozenNanos: UInt64 = 0
    /// Freeze to every page being on the destination (lazy-pages' CLOSE answered).
    public var allLocalNanos: UInt64?
    public var hookNanos: UInt64 = 0
    public var pushNanos: UInt64 = 0

    public var finalDirtyPages = 0
    /// Pages the store held when the lazy restore started (after the final scan's invalidations).
    public var storePagesAtFreeze = 0
    /// Pages the dump left on the source (lazy pagemap entries).
    public var lazyPages = 0
    /// Of those, the ones the store held at the freeze (after the invalidations, before the push).
    public var lazyPagesInStoreAtFreeze = 0
    public var pagesPushed = 0
    public var proxy = LazyProxyStats()
    public var imageBytes: UInt64 = 0
    public var killedSourceTasks = 0
    public var restoredPID: pid_t = 0
    /// Set when the move failed after the destination started running: the container
    /// is lost (the source was killed at the commit and is never resumed).
    public var lost: String?
    /// What was kept when lost: the images, logs and page store (paths).
    public var kept: [String] = []

    public init(mode: LazyMode) { self.mode = mode }

    public var description: String {
        func ms(_ n: UInt64) -> String { String(format: "%.1f ms", Double(n) / 1e6) }
        var s = "\(mode.rawValue): frozen \(ms(frozenNanos)) [dump \(ms(dumpNanos)), final scan \(ms(finalScanNanos)) (\(finalDirtyPages) dirty), "
        s += "image copy \(ms(imageCopyNanos)) (\(imageBytes) B), restore \(ms(restoreNanos)), "
        s += "push wait \(ms(pushWaitNanos)), lazy-pages start \(ms(lazyDaemonNanos)), commit \(ms(commitNanos)) (\(killedSourceTasks) source tasks killed)]"
        s += "; all pages local after \(allLocalNanos.map(ms) ?? "never")"
        s += "; lazy pages \(lazyPages): \(proxy.pagesServedLocally) served locally (store had \(lazyPagesInStoreAtFreeze) of them, \(storePagesAtFreeze) pages in all, \(pagesPushed) pushed in \(ms(pushNanos))), "
        s += "\(proxy.pagesFetched) fetched in \(proxy.forwardedRequests) GETs, fetched twice \(proxy.pagesFetchedTwice), "
        s += "fetched though local \(proxy.fetchedButAlreadyLocal), requested twice \(proxy.pagesRequestedTwice); \(proxy.requests) GETs from lazy-pages"
        if let lost { s += "; CONTAINER LOST: \(lost); kept \(kept.joined(separator: ", "))" }
        return s
    }
}

/// The destination, as a lazy migration needs it.
public struct LazyDestination {
    public var store: PageStore
    /// CRIU for `restore` (launcher: the namespace holding the destination's bridge).
    public var criu: CRIU
    /// CRIU for `lazy-pages` (host loopback: it talks to the proxy).
    public var lazyPagesCRIU: CRIU
    public var restore: RestoreOptions
    public var cgroup: Cgroup

    public init(store: PageStore, criu: CRIU, lazyPagesCRIU: CRIU, restore: RestoreOptions, cgroup: Cgroup) {
        self.store = store; self.criu = criu; self.lazyPagesCRIU = lazyPagesCRIU; self.restore = restore; self.cgroup = cgroup
    }
}

/// Makes sure the source can never run again: SIGKILL to every task of its cgroup while
/// CRIU holds them frozen (cgroup freezer or ptrace stop). A task with SIGKILL pending can
/// not return to user space: it dies at the latest when CRIU lets it go, whether CRIU
/// completes the dump (it kills them itself) or fails it (it "resumes" them, into death).
/// CRIU's page server keeps serving: the lazy pages sit in its pipes (vmspliced at dump,
/// read back with tee()), not in the tasks' address spaces.
public enum SourceTermination {
    /// Kills every task and checks that each is gone, a zombie, or has SIGKILL pending.
    /// Returns the number of tasks; throws if one could not be doomed.
    public static func killAll(cgroup: Cgroup) throws -> Int {
        let pids = ContainerProcesses.hostPIDs(cgroupDirectories: cgroup.directories)
        for pid in pids { kill(pid, SIGKILL) }
        for pid in pids where !isDoomed(pid) {
            throw GodwitError("source task \(pid) survived SIGKILL")
        }
        return pids.count
    }

    /// Gone, dead, or SIGKILL pending (shared or per-thread).
    public static func isDoomed(_ pid: pid_t) -> Bool {
        guard let status = HostEnvironment.read("/proc/\(pid)/status") else { return true }
        for line in status.split(separator: "\n") {
            if line.hasPrefix("State:"), line.contains("Z") || line.contains("X") { return true }
            if line.hasPrefix("ShdPnd:") || line.hasPrefix("SigPnd:"),
               let mask = UInt64(line.split(separator: "\t").last ?? "", radix: 16), mask & (1 << 8) != 0 { return true }
        }
        return false
    }
}

/// The lazy migration engine: lazy dump on the source (CRIU freezes and keeps the tasks
/// frozen while its page server listens), [hybrid: final dirty scan, invalidations, and a
/// background push of the final dirty pages read from the frozen tasks], image copy,
/// `criu lazy-pages` on the destination behind a LazyPageProxy, `criu restore
/// --lazy-pages --leave-stopped`, then THE COMMIT: SIGKILL to every source task (still
/// frozen by CRIU), then SIGCONT to the restored tasks.
///
/// Never two copies: before the commit any failure kills the destination's tasks first,
/// then fails the page-server session (CRIU resumes the source). From the commit on the
/// source tasks are doomed (SIGKILL pending), so whatever CRIU does, they never run
/// again; a failure after it reports the container lost: the restored tasks are killed
/// BEFORE `criu lazy-pages` (else the kernel would give them zero pages), within
/// `lostCleanupTimeout`. If Godwit dies before the commit, the sockets reset and CRIU
/// resumes the source; the destination's tasks were never continued (leave-stopped).
public final class LazyMigration {
    public let mode: LazyMode
    public let source: FinalPhaseSource
    public let destination: LazyDestination
    public let progress: ((String) -> Void)?
    /// Test and daemon hooks.
    public var whileFrozen: (() throws -> Void)?
    /// Called right after the commit and SIGCONT, with the proxy (e.g. to cut it).
    public var afterCommit: ((LazyPageProxy) -> Void)?
    /// Called before the commit with the restored (stopped) init pid; a throw rolls back.
    public var beforeCommit: ((pid_t) throws -> Void)?
    /// How the proxy reaches the source's page server (default: TCP to CRIU).
    public var upstreamFactory: (PageServerAddress) throws -> LazyPageUpstream = { a in
        try TCPPageServerUpstream(host: a.address, port: a.port)
    }
    /// Longest wait for every page to arrive after the destination runs.
    public var allLocalTimeout: TimeInterval = 300
    public var proxyHost = "127.0.0.1"

    public init(mode: LazyMode, source: FinalPhaseSource, destination: LazyDestination, progress: ((String) -> Void)? = nil) {
        self.mode = mode
        self.source = source
        self.destination = destination
        self.progress = progress
    }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    public func run(round: Int = 1) throws -> LazyMigrationReport {
        var report = LazyMigrationReport(mode: mode)
        var dump: LazyDump?
        var proxy: LazyPageProxy?
        var daemon: LazyPagesDaemon?
        var push: PushJob?
        var committed = false
        let dstImages = destination.restore.imagesDirectory
        let store = destination.store
        var t0 = Self.now()
        do {
            // 0. Before the freeze: the proxy listens. (`criu lazy-pages` can't start yet:
            //    it reads the dump's images at start-up; measured: "Unexpected EOF on
            //    (empty-image)" when started on an empty directory.)
            let p = try LazyPageProxy(store: store, host: proxyHost)
            p.holdClose()  // until the commit: CLOSE would complete the dump (killing the source)
            proxy = p
            t0 = Self.now()

            // 1. Lazy dump: CRIU freezes through the freezer cgroup and serves pages.
            var t = Self.now()
            var options = DumpOptions(pid: source.initPID, imagesDirectory: source.imagesDirectory)
            options.freezerCgroup = source.cgroup.directory(for: "freezer")
            let port = try PageServerClient.freePort(host: source.pageServerHost)
            let address = PageServerAddress(address: source.pageServerHost, port: port)
            options.lazyPages = address
            let lazy = try LazyDump(criu: source.criu, options: options)
            dump = lazy
            try lazy.waitUntilServing()
            report.dumpNanos = Self.now() - t

            // 2. Hybrid: final scan (race-free: frozen), invalidations, push.
            var scan: DirtyScan?
            if mode == .hybrid {
                t = Self.now()
                let s = try source.tracker.scan(attachNew: false)
                source.tracker.close()
                let stream = MemoryByteStream()
                _ = try PreCopySender(writer: PageRecordWriter(sink: stream)).sendInvalidations(s, round: round)
                _ = try PreCopyReceiver(reader: PageRecordReader(source: stream), store: store).receiveRound()
                report.finalDirtyPages = s.dirtyPages
                report.finalScanNanos = Self.now() - t
                scan = s
            }
            report.storePagesAtFreeze = store.counts.pages
            // Which lazy pages the store holds now (before the push adds any).
            for (id, entries) in try ImageRebuilder(directory: source.imagesDirectory).lazyEntries() {
                for e in entries {
                    report.lazyPages += e.pages
                    for i in 0..<e.pages where store.contains(nsPID: id, vaddr: e.vaddr + UInt64(i) * systemPageSize) {
                        report.lazyPagesInStoreAtFreeze += 1
                    }
                }
            }
            let hook = Self.now()
            try whileFrozen?()
            report.hookNanos += Self.now() - hook

            // 3. The proxy, connected to the source's page server; the push feeds its store.
            p.attach(upstream: try upstreamFactory(address))
            p.start()
            if let scan { push = try PushJob.start(scan: scan, round: round + 1, proxy: p) }

            // 4. Images to the destination.
            let ti = Self.now()
            report.imageBytes = try FinalPhase.copyImages(from: source.imagesDirectory, to: dstImages)
            report.imageCopyNanos = Self.now() - ti

            // 5. criu lazy-pages behind the proxy.
            t = Self.now()
            let d = try LazyPagesDaemon(criu: destination.lazyPagesCRIU,
                                        address: PageServerAddress(address: proxyHost, port: p.port), directory: dstImages)
            daemon = d
            try d.waitUntilReady()
            report.lazyDaemonNanos = Self.now() - t

            // 6. Lazy restore, tasks left stopped until the source is doomed.
            t = Self.now()
            var restore = destination.restore
            restore.lazyPages = true
            restore.leaveStopped = true
            let (pid, _) = try destination.criu.restore(restore)
            report.restoredPID = pid
            report.restoreNanos = Self.now() - t
            let h2 = Self.now()
            try beforeCommit?(pid)
            report.hookNanos += Self.now() - h2
            if let push {
                t = Self.now()
                let (pages, nanos, error) = push.wait(timeout: 60)
                report.pagesPushed = pages
                report.pushNanos = nanos
                report.pushWaitNanos = Self.now() - t
                if let error { progress?("background push stopped early (\(error)); the rest is fetched on fault") }
            }
            if case .failed(let why)? = p.wait(timeout: 0) { throw GodwitError(why) }
            // A broken source connection before the commit means CRIU already resumed the
            // source: never commit on top of that.
            if let why = p.upstreamFailure { throw GodwitError("the connection to the source failed before the commit: \(why)") }
            guard TrackedProcess.of(hostPID: pid) != nil else {
                throw GodwitError("the restored container's init (pid \(pid)) is not there")
            }

            // 7. THE COMMIT: the source can never run again.
            t = Self.now()
            committed = true
            report.killedSourceTasks = try SourceTermination.killAll(cgroup: source.cgroup)
            report.commitNanos = Self.now() - t
            proxy?.releaseClose()
            try? destination.cgroup.thaw()
            for task in ContainerProcesses.hostPIDs(cgroupDirectories: destination.cgroup.directories) { kill(task, SIGCONT) }
            report.frozenNanos = Self.now() - t0 - report.hookNanos
            progress?(String(format: "destination runs after %.1f ms frozen", Double(report.frozenNanos) / 1e6))
        } catch {
            if !committed {
                rollback(dump: dump, proxy: proxy, daemon: daemon, push: push)
                let failure = (error as? GodwitError) ?? GodwitError.wrap(error, doing: "lazy migration")
                throw failure.with("rolled back", "source resumed")
            }
            // The kill itself failed half-way: the source can't be trusted to stay down,
            // nor resumed. Stop everything and report.
            report.lost = "commit failed: \(error)"
        }

        // 8. After the commit: wait for every page, or clean up a lost container.
        afterCommit?(proxy!)
        if report.lost == nil {
            switch proxy!.wait(timeout: allLocalTimeout) {
            case .completed?:
                if let at = proxy!.completedAt { report.allLocalNanos = at - t0 }
                if daemon?.waitForExit(timeout: 30) == nil { daemon?.kill() }
            case .failed(let why)?:
                report.lost = why
            case nil:
                report.lost = "not every page arrived within \(Int(allLocalTimeout)) s"
            }
        }
        if let lost = report.lost {
            progress?("container lost: \(lost)")
            // Restored tasks first (they might otherwise see zero pages), then the daemon.
            try? destination.cgroup.kill()
            daemon?.kill()
            try? destination.cgroup.remove()
            report.kept = [source.imagesDirectory, dstImages, store.directory]
        }
        proxy!.stop()
        report.proxy = proxy!.statistics
        _ = push?.wait(timeout: 10)
        if dump?.waitForExit(timeout: 30) == nil { dump?.kill() }
        // The doomed source tasks die once CRIU lets go of them.
        _ = poll(timeout: 10) { ContainerProcesses.list(cgroup: source.cgroup).isEmpty }
        return report
    }

    private func rollback(dump: LazyDump?, proxy: LazyPageProxy?, daemon: LazyPagesDaemon?, push: PushJob?) {
        // Destination first: never two copies.
        try? destination.cgroup.kill()
        daemon?.kill()
        try? destination.cgroup.remove()
        _ = push?.wait(timeout: 10)
        proxy?.stop()  // aborts the upstream: CRIU fails the dump and resumes the source
        if let dump {
            if dump.isRunning, proxy?.hasUpstream != true, let port = dump.options.lazyPages?.port,
               let probe = try? PageServerClient(host: source.pageServerHost, port: port) {
                probe.abandon()
            }
            if dump.waitForExit(timeout: 30) == nil { dump.kill() }
        }
        try? source.cgroup.thaw()
        let log = destination.restore.imagesDirectory + "/restore.log"
        if FileManager.default.fileExists(atPath: log) {
            try? FileManager.default.removeItem(atPath: source.imagesDirectory + "/destination-restore.log")
            try? FileManager.default.copyItem(atPath: log, toPath: source.imagesDirectory + "/destination-restore.log")
        }
        try? FileManager.default.removeItem(atPath: destination.restore.imagesDirectory)
        progress?("lazy migration rolled back: the source container runs on")
    }
}

/// The background push of the final dirty set: the source reads the frozen tasks
/// (process_vm_readv) and sends PageRecords through a byte stream (a socketpair here, the
/// daemons' channel later); the destination applies them to the proxy's store.
final class PushJob: @unchecked Sendable {
    private let group = DispatchGroup()
    private let lock = NSLock()
    private var pages = 0
    private var nanos: UInt64 = 0
    private var error: Error?

    static func start(scan: DirtyScan, round: Int, proxy: LazyPageProxy) throws -> PushJob {
        let job = PushJob()
        let (sourceEnd, destinationEnd) = try FileDescriptorStream.pair()
        let t0 = DispatchTime.now().uptimeNanoseconds
        job.group.enter()
        let sender = Thread {
            do {
                _ = try PreCopySender(writer: PageRecordWriter(sink: sourceEnd)).sendRound(PushSender.pushScan(scan), round: round, tracker: nil)
            } catch {
                job.lock.lock(); job.error = job.error ?? error; job.lock.unlock()
            }
            shutdown(sourceEnd.fd, Int32(SHUT_WR))
            job.group.leave()
        }
        job.group.enter()
        let receiver = Thread {
            let reader = PageRecordReader(source: destinationEnd)
            do {
                while let record = try reader.next() {
                    let n = try proxy.apply(record)
                    job.lock.lock(); job.pages += n; job.lock.unlock()
                }
            } catch {
                job.lock.lock(); job.error = job.error ?? error; job.lock.unlock()
                shutdown(destinationEnd.fd, Int32(SHUT_RDWR))
            }
            job.lock.lock(); job.nanos = DispatchTime.now().uptimeNanoseconds - t0; job.lock.unlock()
            job.group.leave()
        }
        for t in [sender, receiver] { t.stackSize = 1 << 20; t.start() }
        // The threads hold the stream ends until they finish.
        job.ends = [sourceEnd, destinationEnd]
        return job
    }

    private var ends: [FileDescriptorStream] = []

    func wait(timeout: TimeInterval) -> (Int, UInt64, Error?) {
        _ = group.wait(timeout: .now() + timeout)
        lock.lock(); defer { lock.unlock() }
        return (pages, nanos, error)
    }
}

/// The source's half of the hybrid push between hosts: reads the final dirty pages from
/// the frozen tasks (process_vm_readv) and sends them as PageRecords through a channel,
/// in the background; the destination applies them to its lazy page proxy's store.
public final class PushSender: @unchecked Sendable {
    private let fd: Int32
    private let group = DispatchGroup()
    private let lock = NSLock()
    private var stats: RoundStats?
    private var error: Error?
    private var nanos: UInt64 = 0

    /// Only what must be pushed: the dirty pages (the invalidations carried the drops and
    /// exits already).
    public static func pushScan(_ scan: DirtyScan) -> DirtyScan {
        var push = scan
        for i in push.processes.indices { push.processes[i].dropped = PageRanges(); push.processes[i].isNew = false }
        push.exited = []
        return push
    }

    /// Starts sending on `fd` (owned from now on: shut down and closed when done).
    public init(scan: DirtyScan, round: Int, fd: Int32) {
        self.fd = fd
        let t0 = DispatchTime.now().uptimeNanoseconds
        group.enter()
        let thread = Thread { [self] in
            defer { group.leave() }
            do {
                let sent = try PreCopySender(writer: PageRecordWriter(sink: FileDescriptorStream(fd: fd, owns: false)))
                    .sendRound(Self.pushScan(scan), round: round, tracker: nil)
                lock.withLock { stats = sent }
            } catch {
                lock.withLock { self.error = error }
            }
            shutdown(fd, Int32(SHUT_WR))
            lock.withLock { nanos = DispatchTime.now().uptimeNanoseconds - t0 }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    deinit { close(fd) }

    /// Stops the push (the channel breaks; the destination fetches the rest on fault).
    public func abort() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Waits for the push to end: pages sent (data + zero), bytes, time, and the error if any.
    public func wait(timeout: TimeInterval) -> (pages: Int, bytes: UInt64, nanos: UInt64, error: Error?)? {
        guard group.wait(timeout: .now() + timeout) == .success else { return nil }
        return lock.withLock { (stats.map { $0.dataPages + $0.zeroPages } ?? 0, stats?.bytesSent ?? 0, nanos, error) }
    }
}
