import Foundation
import GodwitCore

/// A veth to recreate on restore: the container's interface, its new host end, the bridge.
public struct VethMapping: Sendable, Equatable {
    public var containerInterface: String
    public var hostInterface: String
    public var bridge: String
    /// The container's end, made beforehand in this host's namespace (host end already on
    /// the bridge): CRIU moves it in and renames it instead of creating the pair. For user
    /// namespaces, where CRIU 4.2.1's own creation (through usernsd) fails on this kernel
    /// with EOPNOTSUPP (`couldn't restore veth interface eth0 via usernsd`).
    public var precreatedPeer: String?

    public init(containerInterface: String, hostInterface: String, bridge: String, precreatedPeer: String? = nil) {
        self.containerInterface = containerInterface
        self.hostInterface = hostInterface
        self.bridge = bridge
        self.precreatedPeer = precreatedPeer
    }
}

/// What to dump. Every flag choice for a system container is made here and in RestoreOptions.
public struct DumpOptions: Sendable {
    public var pid: Int32
    public var imagesDirectory: String
    /// Established TCP connections are checkpointed (repair mode) instead of refused.
    public var tcpEstablished = true
    /// A listening socket with connections the server has not accepted yet no longer fails
    /// the dump (`inet: In-flight connection`, which any server under load hits): CRIU
    /// leaves them out and the restored listener starts with an empty queue.
    public var skipInFlight = true
    /// Before CRIU starts, how long servers get to accept what they queued while new
    /// connection attempts wait (ListenQueueDrain); nil: CRIU freezes them as they are.
    public var acceptQueueDrain: TimeInterval? = 0.5
    /// Freeze through the container's freezer cgroup: all tasks at once, new forks included.
    public var freezerCgroup: String?
    /// Freeze that cgroup before CRIU starts (LazyDump.freezeFirst): saves CRIU's 100 ms
    /// sleep. Off for the benchmark's plain-CRIU baselines.
    public var freezeBeforeDump = false
    public var manageCgroups = true
    public var leaveRunning = false
    /// Lazy (post-copy) dump: memory stays on the source and is served by CRIU's page server.
    public var lazyPages: PageServerAddress?
    /// Lazy dump over a connection made beforehand (`PageServerConnection`): this process's
    /// descriptor of CRIU's end, handed to CRIU as `--ps-socket`; CRIU then never listens,
    /// and `lazyPages` is not needed.
    public var lazyPagesSocket: Int32?
    /// Stop-and-copy straight to a remote `criu page-server` instead of local files.
    public var pageServer: PageServerAddress?
    /// A descriptor CRIU inherits and writes one byte to once its page server listens
    /// (`--status-fd`), then closes; LazyDump sets it and waits on the other end.
    public var statusFD: Int32?
    /// The container's cgroup: its whole tree is recorded beside the images (CgroupTree).
    public var cgroup: Cgroup?

    public init(pid: Int32, imagesDirectory: String) {
        self.pid = pid
        self.imagesDirectory = imagesDirectory
    }
}

public struct PageServerAddress: Sendable, Equatable {
    public var address: String
    public var port: Int
    public init(address: String, port: Int) { self.address = address; self.port = port }
}

public struct RestoreOptions: Sendable {
    public var imagesDirectory: String
    public var rootfs: String
    public var pidFile: String
    public var veths: [VethMapping] = []
    public var tcpEstablished = true
    public var manageCgroups = true
    /// Restores the container's cgroups under this root (another host's cgroup parent).
    public var cgroupRoot: String?
    /// Restore with memory fetched on fault from `criu lazy-pages` (socket in the images dir).
    public var lazyPages = false
    /// Leave the restored tasks stopped (SIGSTOP) instead of running, e.g. to compare their
    /// memory with the source's before they change it; SIGCONT them afterwards.
    public var leaveStopped = false
    /// The container's cgroup on this host: the dumped tree is recreated below it first.
    public var cgroup: Cgroup?
    /// An unprivileged container's root on the host: the recreated cgroup tree is
    /// delegated to it, and its device nodes are bound from this host (ExternalDevices).
    public var unprivilegedRoot: UInt32?

    public init(imagesDirectory: String, rootfs: String, pidFile: String) {
        self.imagesDirectory = imagesDirectory
        self.rootfs = rootfs
        self.pidFile = pidFile
    }
}

/// Figures from one CRIU run, with where its log is.
public struct CRIURun: Sendable {
    public var logPath: String
    public var wallSeconds: Double
    public var stats: CRIUStats?
}

/// Runs CRIU for system containers. The only code in Godwit that knows CRIU's flags.
public struct CRIU: Sendable {
    public var binary: CRIUBinary
    /// Prefix that runs CRIU elsewhere, e.g. `nsenter --net=...`: restore creates the veth's
    /// host end in the namespace CRIU runs in, which must hold the bridge.
    public var launcher: [String]

    public init(binary: CRIUBinary, launcher: [String] = []) {
        self.binary = binary
        self.launcher = launcher
    }

    public static func locate(setting: String? = nil) throws -> CRIU {
        let binary = try CRIUBinary.locate(setting: setting)
        _ = try binary.requireUsableVersion()
        return CRIU(binary: binary)
    }

    public func dumpArguments(_ o: DumpOptions, log: CRIULogFile? = nil) -> [String] {
        let log = log ?? CRIULogFile.named("dump.log", directory: o.imagesDirectory)
        var args = ["dump", "-t", String(o.pid), "-D", o.imagesDirectory] + log.arguments
            + ["--network-lock", CRIUNetworkLock.backend]
        if o.tcpEstablished { args.append("--tcp-established") }
        if o.skipInFlight { args.append("--skip-in-flight") }
        // systemd mounts a ramfs per service for its credentials (/run/credentials/UNIT),
        // and CRIU knows no ramfs: with this it re-creates them, empty. CheckpointReadiness
        // refuses a container whose ramfs holds files, so nothing is lost silently.
        args += ["--enable-fs", "ramfs"]
        if o.manageCgroups { args.append("--manage-cgroups=full") }
        if let freezer = o.freezerCgroup { args += ["--freeze-cgroup", freezer] }
        args += ExternalDevices.dumpArguments(pid: o.pid)
        if o.leaveRunning { args.append("--leave-running") }
        if o.lazyPagesSocket != nil {
            args += ["--lazy-pages", "--ps-socket", String(CRIUProcess.pageServerFD)]
        } else if let lazy = o.lazyPages {
            args += ["--lazy-pages", "--address", lazy.address, "--port", String(lazy.port)]
        }
        if let server = o.pageServer { args += ["--page-server", "--address", server.address, "--port", String(server.port)] }
        if let fd = o.statusFD { args += ["--status-fd", String(fd)] }
        return args
    }

    public func restoreArguments(_ o: RestoreOptions, log: CRIULogFile? = nil) -> [String] {
        let log = log ?? CRIULogFile.named("restore.log", directory: o.imagesDirectory)
        var args = ["restore", "-D", o.imagesDirectory] + log.arguments
            + ["-d", "--pidfile", o.pidFile, "--root", o.rootfs, "--network-lock", CRIUNetworkLock.backend]
        if o.tcpEstablished { args.append("--tcp-established") }
        if o.manageCgroups { args.append("--manage-cgroups=full") }
        if let root = o.cgroupRoot { args += ["--cgroup-root", root] }
        // The container's veth is dumped as an external device; restore recreates it with a
        // new host end attached to this host's bridge (IP, routes and MAC come back inside).
        for veth in o.veths {
            if let peer = veth.precreatedPeer {
                args += ["--external", "netdev[\(veth.containerInterface)]:\(peer)"]
            } else {
                args += ["--external", "veth[\(veth.containerInterface)]:\(veth.hostInterface)@\(veth.bridge)"]
            }
        }
        if o.unprivilegedRoot != nil { args += ExternalDevices.restoreArguments }
        if o.lazyPages { args.append("--lazy-pages") }
        if o.leaveStopped { args.append("--leave-stopped") }
        return args
    }

    @discardableResult
    public func dump(_ options: DumpOptions) throws -> CRIURun {
        try OwnerOnly.directory(options.imagesDirectory)
        ConsoleKeeper.detachClients(initPID: options.pid)
        let drain = options.acceptQueueDrain.flatMap { ListenQueueDrain.begin(pid: options.pid, timeout: $0) }
        defer { drain?.end() }
        let log = CRIULogFile.named("dump.log", directory: options.imagesDirectory)
        let run = try run(dumpArguments(options, log: log), directory: options.imagesDirectory, logPath: log.path, phase: "dump")
        // The tasks are gone but their cgroups are not removed before the caller stops them.
        if let cgroup = options.cgroup { try CgroupTree.record(cgroup, into: options.imagesDirectory) }
        // A stateful stop keeps these until the next start.
        OwnerOnly.restrictFiles(in: options.imagesDirectory)
        return run
    }

    /// Restores and returns the container init's host PID.
    public func restore(_ options: RestoreOptions) throws -> (pid: Int32, run: CRIURun) {
        // CRIU refuses to overwrite a pidfile.
        try? FileManager.default.removeItem(atPath: options.pidFile)
        if let cgroup = options.cgroup {
            try CgroupTree.recreate(below: cgroup, from: options.imagesDirectory)
            if let root = options.unprivilegedRoot { try cgroup.delegate(to: root) }
        }
        if let root = options.unprivilegedRoot { try Self.handImages(in: options.imagesDirectory, to: root) }
        let log = CRIULogFile.named("restore.log", directory: options.imagesDirectory)
        let run = try run(restoreArguments(options, log: log), directory: options.imagesDirectory, logPath: log.path, phase: "restore")
        guard let text = HostEnvironment.read(options.pidFile), let pid = Int32(text) else {
            throw GodwitError("CRIU restore finished but wrote no pid to \(options.pidFile)",
                              context: [("phase", "restore"), ("log", run.logPath)])
        }
        return (pid, run)
    }

    /// CRIU opens images from the restored tasks, inside the container's user namespace,
    /// in two guises: early (timens) still as host root, unmapped there, and later
    /// (tty-info) as the container's root, which is the map's base on the host. Owner root
    /// and group base, 0750/0640, lets both read and nobody else. Only the directory
    /// matters, not its parents: CRIU opens images relative to a descriptor of it.
    static func handImages(in directory: String, to gid: UInt32) throws {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        for (index, path) in ([directory] + entries.map({ directory + "/" + $0 })).enumerated() {
            var info = stat()
            guard lstat(path, &info) == 0 else { continue }
            guard (info.st_mode & S_IFMT) != S_IFLNK else { continue }
            guard chown(path, 0, gid) == 0, chmod(path, index == 0 ? 0o750 : (info.st_mode & 0o600) | 0o040) == 0 else {
                throw GodwitError.errno("handing \(path) to the container's root").with("phase", "restore")
            }
        }
    }

    /// Starts CRIU in the background (e.g. `criu page-server` for a benchmark baseline): it
    /// talks through its log and sockets, so stdio goes nowhere. LazyDump and
    /// LazyPagesDaemon use `start`, which also tells when CRIU is ready.
    public func spawn(_ args: [String]) throws -> Process {
        let argv = launcher + [binary.path] + args
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Command.resolve(argv[0]))
        process.arguments = Array(argv.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return process
    }

    /// Starts CRIU in the background with a status pipe on `CRIUProcess.statusFD`: `args`
    /// must pass that number to `--status-fd`.
    func start(_ args: [String], pageServerSocket: Int32? = nil) throws -> CRIUProcess {
        try CRIUProcess(launcher + [binary.path] + args, pageServerSocket: pageServerSocket)
    }

    private func run(_ args: [String], directory: String, logPath: String, phase: String) throws -> CRIURun {
        let start = Date()
        let result = try Command.run(launcher + [binary.path] + args)
        let wall = Date().timeIntervalSince(start)
        guard result.succeeded else {
            let line = CRIULog.firstError(path: logPath) ?? result.lastErrorLine
            throw GodwitError("CRIU \(phase) failed: \(line)",
                              hint: "the full log is \(logPath)",
                              context: [("phase", phase), ("criu", binary.path)])
        }
        return CRIURun(logPath: logPath, wallSeconds: wall, stats: try? CRIUStats.read(directory: directory))
    }
}

/// CRIU logs many lines per failure; the first "Error (" line is usually the cause, the
/// later ones its consequences.
public enum CRIULog {
    /// Errors CRIU logs on every run here (no CAP_SYS_RESOURCE, no iptables binaries), which
    /// never cause a failure.
    static let harmless = ["RLIMIT_NOFILE", "Can't keep kdat cache", "iptables", "ip6tables"]

    public static func firstError(path: String) -> String? {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
        return firstError(in: text)
    }

    public static func firstError(in text: String) -> String? {
        let lines = text.split(separator: "\n")
        let errors = lines.filter { line in line.contains("Error (") && !harmless.contains { line.contains($0) } }
        let error = errors.first ?? lines.last { $0.contains("Error") }
        return error.map { $0.trimmingCharacters(in: .whitespaces) }
    }
}
