import Foundation
import GodwitCore

/// A running `criu dump --lazy-pages`: it writes every image except the lazy memory, then
/// keeps the container's tasks frozen while its page server hands out pages, until a
/// client sends CLOSE (dump completes, tasks are killed) or drops the connection (dump
/// fails, CRIU resumes the tasks). Runs in the background; `criu dump` itself blocks.
public final class LazyDump: Sendable {
    /// What CRIU was run with; `statusFD` is always set (LazyDump owns that descriptor).
    public let options: DumpOptions
    /// Where CRIU listens (nil when it was handed a connection: `options.lazyPagesSocket`).
    public let address: PageServerAddress?
    public let logPath: String
    private let process: CRIUProcess
    /// Ends once CRIU serves: its network lock has long been in place by then.
    private let drain: ListenQueueDrain?
    public let startedAt = Date()

    public init(criu: CRIU, options: DumpOptions) throws {
        precondition(options.lazyPages != nil || options.lazyPagesSocket != nil, "LazyDump needs a page-server address or connection")
        let address = options.lazyPagesSocket == nil ? options.lazyPages : nil
        var options = options
        options.statusFD = CRIUProcess.statusFD
        self.options = options
        self.address = address
        try OwnerOnly.directory(options.imagesDirectory)
        let log = CRIULogFile.named("dump.log", directory: options.imagesDirectory)
        logPath = log.path
        try? FileManager.default.removeItem(atPath: logPath)
        // CRIU's end is CRIU's alone once it started (or never will be): it must not be held
        // open here, or CRIU's exit would not end the connection.
        defer { if let socket = options.lazyPagesSocket { close(socket) } }
        // Before the freeze: a console client outside the container would make the dump fail.
        ConsoleKeeper.detachClients(initPID: options.pid)
        let drain = options.acceptQueueDrain.flatMap { ListenQueueDrain.begin(pid: options.pid, timeout: $0) }
        if options.freezeBeforeDump, let freezer = options.freezerCgroup { Self.freezeFirst(freezer) }
        do {
            process = try criu.start(criu.dumpArguments(options, log: log), pageServerSocket: options.lazyPagesSocket)
        } catch {
            drain?.end()
            throw error
        }
        self.drain = drain
    }

    deinit { drain?.end() }

    /// Freezes the cgroup before CRIU starts, polling every millisecond. CRIU's own
    /// freeze_processes (criu/seize.c) sleeps 100 ms whenever the freezer is not FROZEN at
    /// its first read, which it never is right after CRIU asked for it: 100 ms of frozen
    /// time on every dump. CRIU finds it FROZEN, goes on at once, and on a failed dump
    /// leaves it as it found it (frozen): the rollback thaws it (SourceHost.resume). Best
    /// effort: a freezer that is slow to settle is left to CRIU, as before.
    static func freezeFirst(_ directory: String) {
        let v1 = directory + "/freezer.state", v2 = directory + "/cgroup.freeze"
        let (control, value, done): (String, String, () -> Bool)
        if FileManager.default.fileExists(atPath: v1) {
            (control, value, done) = (v1, "FROZEN", { HostEnvironment.read(v1) == "FROZEN" })
        } else if FileManager.default.fileExists(atPath: v2) {
            (control, value, done) = (v2, "1", { (HostEnvironment.read(directory + "/cgroup.events") ?? "").contains("frozen 1") })
        } else {
            return
        }
        guard (try? value.write(toFile: control, atomically: false, encoding: .utf8)) != nil else { return }
        let deadline = DispatchTime.now().uptimeNanoseconds + 2_000_000_000
        while !done(), DispatchTime.now().uptimeNanoseconds < deadline { usleep(1000) }
    }

    public var isRunning: Bool { process.isRunning }
    public var exitStatus: Int32? { process.exitStatus }

    /// Waits until CRIU says its page server listens, which it does only after every image
    /// is written (cr_lazy_mem_dump → cr_page_server → run_tcp_server → status_ready in
    /// CRIU 4.2). Throws with CRIU's first error if the dump ends instead, or on timeout.
    public func waitUntilServing(timeout: TimeInterval = 60) throws {
        defer { drain?.end() }
        switch process.waitUntilReady(timeout: timeout) {
        case .ready where process.isRunning:
            // Every image is written and the tasks are held: the tree can't change.
            if let cgroup = options.cgroup { try CgroupTree.record(cgroup, into: options.imagesDirectory) }
            return
        case .ready, .exited:
            _ = process.waitForExit(timeout: 5)
            let line = CRIULog.firstError(path: logPath) ?? "exit \(process.exitStatus.map { String($0) } ?? "unknown")"
            throw GodwitError("CRIU lazy dump failed: \(line)", hint: "the full log is \(logPath)", context: [("phase", "dump")])
        case .timedOut:
            throw GodwitError("CRIU lazy dump did not start its page server within \(Int(timeout)) s",
                              hint: "the full log is \(logPath)", context: [("phase", "dump")])
        }
    }

    /// Waits for `criu dump` to exit; its status, or nil on timeout.
    @discardableResult
    public func waitForExit(timeout: TimeInterval = 30) -> Int32? {
        process.waitForExit(timeout: timeout)
    }

    /// Last resort for cleanup: SIGKILL the CRIU process (the kernel detaches its ptrace
    /// stops; the caller thaws the cgroup). Only used once its page server is serving,
    /// when no parasite code is left inside the tasks.
    public func kill() {
        process.kill()
        drain?.end()
    }

    public var stats: CRIUStats? { try? CRIUStats.read(directory: options.imagesDirectory) }
}
