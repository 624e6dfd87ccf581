import Checkpoint
import Foundation
import GodwitCore
import Lab
import Runtime

/// CRIU's own migrations, without Godwit's logic, as the bench's baselines: the container
/// is launched through h1's daemon, then checkpointed by CRIU directly and restored on h2
/// outside any daemon (into a copy of its rootfs, its cgroup under h2's parent, its veth on
/// h2's bridge). Both are what a CRIU user would script:
///
/// - criu-page-server: `criu page-server` on h2, `criu dump --page-server` on h1, copy the
///   remaining images and the rootfs's changes, `criu restore` on h2.
/// - criu-lazy: `criu dump --lazy-pages` on h1, copy images and rootfs, `criu lazy-pages` +
///   `criu restore --lazy-pages` on h2; memory follows on fault and in the background.
///
/// Afterwards the restored copy is killed through its cgroup and everything it used on h2
/// goes; h1's daemon deletes what is left of the original (`delete --force`).
struct BaselineMove {
    let runner: BenchRunner
    let workload: Workload
    static let port = 27_000

    private var source: LabHost { runner.source }
    private var destination: LabHost { runner.destination }

    func criu(in host: LabHost) -> CRIU { CRIU(binary: runner.criu.binary, launcher: LabNamespace.enter(host.netns)) }

    func run(_ strategy: BenchStrategy, into sample: inout BenchSample) throws {
        let stateFile = source.stateDirectory + "/containers/\(workload.name)/state.json"
        guard let data = FileManager.default.contents(atPath: stateFile) else {
            throw GodwitError("no runtime state for \(workload.name) at \(stateFile)")
        }
        let container = try JSONDecoder().decode(RunningContainer.self, from: data)
        let work = destination.stateDirectory + "/bench/\(workload.name)"
        let sourceImages = source.stateDirectory + "/bench/\(workload.name)/images"
        let images = work + "/images"
        let layout = try CgroupLayout.detect()
        let cgroup = Cgroup(path: destination.cgroups.name + "/" + workload.name, layout: layout)
        // An unprivileged container's copy sees the image through the same id map.
        let rootfs = RootFS(image: container.rootfs.image, directory: work, kind: container.rootfs.kind,
                            idmap: container.rootfs.idmap)
        let veth = container.veth
        let hostNetwork = NetworkNamespace.named(destination.netns)
        // Whatever happens, the restored copy and its files go at the end of the run.
        let raw = runner.rawDirectory + "/" + workload.name
        workload.baselineCleanup = {
            // CRIU's logs outlive the run, for the post-mortem of a slow or failed baseline.
            for dir in [sourceImages, images] {
                for log in ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []) where log.hasSuffix(".log") {
                    try? FileManager.default.copyItem(atPath: dir + "/" + log,
                                                      toPath: raw + (dir == images ? "-h2-" : "-h1-") + log)
                }
            }
            try? cgroup.kill()
            try? veth?.remove(in: hostNetwork)
            try? rootfs.remove()
            try? cgroup.remove()
            try? FileManager.default.removeItem(atPath: work)
            try? FileManager.default.removeItem(atPath: source.stateDirectory + "/bench/\(workload.name)")
        }
        for dir in [sourceImages, images] { try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true) }

        var dump = DumpOptions(pid: container.initPID, imagesDirectory: sourceImages)
        dump.freezerCgroup = container.cgroup.directory(for: "freezer")
        var restore = RestoreOptions(imagesDirectory: images, rootfs: rootfs.path, pidFile: images + "/restore.pid")
        restore.cgroupRoot = "/" + cgroup.path
        restore.unprivilegedRoot = container.spec.security.idmap?.hostBase
        if let veth, let network = container.spec.network {
            // What the daemon's restore does too (MigrationDriver): a user namespace needs
            // the pair made beforehand.
            restore.veths = [VethMapping(containerInterface: Veth.containerName, hostInterface: veth.hostName, bridge: network.bridge,
                                         precreatedPeer: container.spec.security.idmap == nil ? nil
                                             : try veth.precreate(bridge: network.bridge, in: hostNetwork))]
        }
        let port = Self.port + Int.random(in: 0..<1000)
        let clock = BenchClock()
        var phases: [BenchPhase] = []

        switch strategy {
        case .criuPageServer:
            let server = try criu(in: destination).spawn(["page-server", "-D", images, "--address", destination.address,
                                                          "--port", String(port), "-o", "page-server.log"])
            defer { if server.isRunning { kill(server.processIdentifier, SIGKILL) }; server.waitUntilExit() }
            guard poll(timeout: 10, { Self.listening(pid: server.processIdentifier, port: port) || !server.isRunning }),
                  server.isRunning else {
                throw GodwitError("criu page-server did not start: \(CRIULog.firstError(path: images + "/page-server.log") ?? "no log")")
            }
            let start = clock.now
            dump.pageServer = PageServerAddress(address: destination.address, port: port)
            let dumped = try criu(in: source).dump(dump)
            let pageBytes = (dumped.stats?.pagesWritten ?? 0) * 4096
            phases.append(BenchPhase(name: "criu dump --page-server", millis: clock.since(start), bytes: pageBytes))
            _ = poll(timeout: 10) { !server.isRunning }
            let copied = clock.now
            let bytes = try copyImagesAndRootfs(from: sourceImages, to: images, container: container, rootfs: rootfs)
            try cgroup.create()
            phases.append(BenchPhase(name: "copy images + rootfs changes", millis: clock.since(copied), bytes: bytes))
            let restoring = clock.now
            let (pid, _) = try criu(in: destination).restore(restore)
            phases.append(BenchPhase(name: "criu restore", millis: clock.since(restoring), bytes: 0))
            guard kill(pid, 0) == 0 else { throw GodwitError("the restored init (pid \(pid)) is gone") }
            sample.totalMillis = clock.since(start)
            sample.frozenMillis = sample.totalMillis

        case .criuLazy:
            let start = clock.now
            dump.lazyPages = PageServerAddress(address: source.address, port: port)
            let lazy = try LazyDump(criu: criu(in: source), options: dump)
            var daemon: LazyPagesDaemon?
            defer {
                // Never leave CRIU behind: the restored tasks die with the cgroup first (a killed
                // lazy-pages daemon would leave them reading zeros).
                if lazy.isRunning || daemon?.isRunning == true {
                    try? cgroup.kill()
                    daemon?.kill()
                    lazy.kill()
                    if let freezer = container.cgroup.directory(for: "freezer") {
                        try? "THAWED".write(toFile: freezer + "/freezer.state", atomically: false, encoding: .utf8)
                    }
                }
            }
            try lazy.waitUntilServing(timeout: 60)
            phases.append(BenchPhase(name: "criu dump --lazy-pages", millis: clock.since(start), bytes: 0))
            let copied = clock.now
            let bytes = try copyImagesAndRootfs(from: sourceImages, to: images, container: container, rootfs: rootfs)
            try cgroup.create()
            phases.append(BenchPhase(name: "copy images + rootfs changes", millis: clock.since(copied), bytes: bytes))
            // The pages the lazy dump left on h1: every one of them crosses the link.
            let lazyPageCount = ((try? PagemapImage.list(directory: images)) ?? []).reduce(0) { total, image in
                total + ((try? PagemapImage(path: image.path))?.entries.filter { $0.flags.contains(.lazy) }.reduce(0) { $0 + $1.pages } ?? 0)
            }
            let restoring = clock.now
            let pagesDaemon = try LazyPagesDaemon(criu: criu(in: destination), address: PageServerAddress(address: source.address, port: port),
                                                  directory: images)
            daemon = pagesDaemon
            try pagesDaemon.waitUntilReady()
            restore.lazyPages = true
            let (pid, _) = try criu(in: destination).restore(restore)
            sample.frozenMillis = clock.since(start)
            phases.append(BenchPhase(name: "criu lazy-pages + restore --lazy-pages", millis: clock.since(restoring), bytes: 0))
            guard kill(pid, 0) == 0 else { throw GodwitError("the restored init (pid \(pid)) is gone") }
            let fetching = clock.now
            guard pagesDaemon.waitForExit(timeout: 600) != nil else { throw GodwitError("criu lazy-pages did not finish within 600 s") }
            sample.allLocalMillis = clock.since(start)
            _ = lazy.waitForExit(timeout: 60)
            let lazyBytes = UInt64(lazyPageCount) * 4096
            phases.append(BenchPhase(name: "lazy pages", millis: clock.since(fetching), bytes: lazyBytes))
            sample.totalMillis = clock.since(start)
        case .move(let strategy):
            throw GodwitError("\(strategy.rawValue) is a Godwit move, not a CRIU baseline")
        }
        sample.phases = phases
        workload.restoredRootfs = rootfs.path
        workload.restoredCgroup = cgroup
    }

    /// What a script would copy besides the pages: CRIU's images, and the container's own
    /// filesystem changes (the overlay's upper layer; the image is on both hosts). Returns bytes.
    private func copyImagesAndRootfs(from sourceImages: String, to images: String, container: RunningContainer, rootfs: RootFS) throws -> UInt64 {
        var bytes: UInt64 = 0
        let fm = FileManager.default
        for file in try fm.contentsOfDirectory(atPath: sourceImages) where file.hasSuffix(".img") {
            let target = images + "/" + file
            guard !fm.fileExists(atPath: target) else { continue }  // the page server wrote it
            try fm.copyItem(atPath: sourceImages + "/" + file, toPath: target)
            bytes += (try? fm.attributesOfItem(atPath: target)[.size] as? UInt64) ?? 0
        }
        let from = container.rootfs.kind == .overlay ? container.rootfs.upperPath : container.rootfs.path
        let to = container.rootfs.kind == .overlay ? rootfs.upperPath : rootfs.path
        try Command.check(["mkdir", "-p", to])
        try Command.check(["cp", "-a", from + "/.", to])
        let du = try? Command.run(["du", "-sb", to])
        bytes += du.flatMap { UInt64($0.stdout.split(separator: "\t").first ?? "") } ?? 0
        try rootfs.prepare()
        return bytes
    }

    /// True once `pid`'s network namespace has a TCP socket listening on `port`.
    static func listening(pid: pid_t, port: Int) -> Bool {
        let hexPort = String(format: "%04X", port)
        for table in ["tcp", "tcp6"] {
            for line in (HostEnvironment.read("/proc/\(pid)/net/\(table)") ?? "").split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                if fields.count > 3, fields[1].hasSuffix(":" + hexPort), fields[3] == "0A" { return true }
            }
        }
        return false
    }
}

/// Milliseconds on the monotonic clock (this process is never checkpointed).
struct BenchClock {
    var now: UInt64 { DispatchTime.now().uptimeNanoseconds }
    func since(_ t: UInt64) -> Double { Double(DispatchTime.now().uptimeNanoseconds - t) / 1e6 }
}
