import Checkpoint
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Runtime

/// Two simulated hosts on one machine for migration tests: a source network namespace
/// with a bridge where the container runs, and a destination namespace with its own
/// bridge and cgroup parent where it is restored. Everything has a random suffix and
/// `cleanUp()` removes it all (containers, namespaces, cgroups, files, page stores).
final class MigrationLab {
    let suffix: String
    let directory: String
    /// CRIU images on tmpfs, as a daemon would keep them (dump and restore read/write fast).
    let imagesRoot: String
    let image: String
    let sourceNetns: String
    let destinationNetns: String
    let bridge = "gwmbr0"
    let runtime: ContainerRuntime
    let destinationCgroupParent: String
    var containers: [RunningContainer] = []
    var stores: [PageStore] = []
    /// Root filesystems the engine tests' destinations mounted.
    var destinationRoots: [RootFS] = []
    static let gateway = "10.78.0.1"

    init() throws {
        suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        directory = "/tmp/godwit-mig-" + suffix
        imagesRoot = (FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : "/tmp") + "/godwit-mig-images-" + suffix
        image = directory + "/image"
        sourceNetns = "gwms-" + suffix
        destinationNetns = "gwmd-" + suffix
        destinationCgroupParent = "godwit-mig-dst-" + suffix
        for ns in [sourceNetns, destinationNetns] {
            try Command.check(["ip", "netns", "add", ns])
            try Command.check(["nsenter", "--net=/run/netns/" + ns, "ip", "-batch", "-"], input: """
                link set lo up
                link add \(bridge) type bridge
                addr add \(Self.gateway)/24 dev \(bridge)
                link set \(bridge) up

                """)
        }
        do {
            try Self.makeImage(at: image, scratch: directory)
            try Self.makeCgroupParent(destinationCgroupParent)
            var configuration = RuntimeConfiguration(
                stateRoot: directory + "/containers", cgroupParent: "godwit-mig-src-" + suffix,
                hostNetwork: .named(sourceNetns),
                spawnHelper: Self.spawnHelper())
            // These tests count the workload's processes and compare every page of each
            // across the move. The console keeper is left out: it keeps glibc's rseq area,
            // which the kernel rewrites with the CPU it runs on (the workloads turn rseq off
            // below; the keeper does not get their environment). docs/console.md.
            configuration.consoleKeeper = false
            runtime = try ContainerRuntime(configuration)
        } catch {
            for ns in [sourceNetns, destinationNetns] { _ = try? Command.run(["ip", "netns", "del", ns]) }
            throw error
        }
    }

    static func spawnHelper() -> String {
        // The test bundle sits next to the built executables.
        let candidates = [GodwitPaths.sibling("godwit-spawn"),
                          GodwitPaths.executableDirectory.deletingLastPathComponent().appendingPathComponent("godwit-spawn").path]
        return candidates.first { access($0, X_OK) == 0 } ?? candidates[0]
    }

    /// The destination cgroup a container restored here lands in.
    func destinationCgroup(for container: RunningContainer) -> Cgroup {
        Cgroup(path: destinationCgroupParent + "/" + container.name, layout: runtime.cgroupLayout)
    }

    func spec(_ base: String, writer args: [String]) throws -> ContainerSpec {
        try ContainerSpec(name: "\(base)-\(suffix)", image: image, hostname: base,
                          initCommand: ["/bin/gwwriter"] + args,
                          // No rseq: the kernel writes the cpu id into the registered rseq
                          // area whenever the task migrates between CPUs, which would make
                          // the page-by-page comparison across a restore flaky.
                          environment: ["GLIBC_TUNABLES": "glibc.pthread.rseq=0"],
                          network: NetworkSpec(bridge: bridge, address: try IPv4Interface("10.78.0.2/24"),
                                               gateway: try IPv4Address(Self.gateway)),
                          limits: ResourceLimits(memoryBytes: 512 << 20, pidsMax: 64))
    }

    /// Starts the container (the runtime gives it a cgroup in every hierarchy, which CRIU
    /// needs to restore it under the destination's --cgroup-root).
    func start(_ spec: ContainerSpec) throws -> RunningContainer {
        let c = try runtime.start(spec)
        containers.append(c)
        return c
    }

    func newStore() throws -> PageStore {
        let s = try PageStore()
        stores.append(s)
        return s
    }

    func criu(in netns: String?) throws -> CRIU {
        var engine = try CRIU.locate()
        if let netns { engine.launcher = NetworkNamespace.named(netns).wrap([]) }
        return engine
    }

    func cleanUp() {
        for c in containers { try? runtime.destroy(c) }
        for c in containers {
            let dst = destinationCgroup(for: c)
            try? dst.kill()
            _ = poll(timeout: 5) { dst.processes().isEmpty }
            try? dst.remove()
        }
        // After the restored tasks are gone: they hold their rootfs busy.
        for root in destinationRoots {
            try? root.remove()
            if root.isMounted { _ = try? Command.run(["umount", "-l", root.path]) }
        }
        try? Cgroup(path: destinationCgroupParent, layout: runtime.cgroupLayout).remove()
        try? runtime.cgroup(for: "").remove()
        for s in stores { s.destroy() }
        for ns in [sourceNetns, destinationNetns] { _ = try? Command.run(["ip", "netns", "del", ns]) }
        // GODWIT_KEEP_TEST_FILES=1 keeps images and logs for a post-mortem.
        if ProcessInfo.processInfo.environment["GODWIT_KEEP_TEST_FILES"] == nil {
            _ = try? Command.run(["rm", "-rf", "--one-file-system", directory])
            _ = try? Command.run(["rm", "-rf", "--one-file-system", imagesRoot])
        }
    }

    /// The destination's cgroup parent in every hierarchy; CRIU creates the container's
    /// cgroup below it.
    static func makeCgroupParent(_ name: String) throws {
        try Cgroup(path: name, layout: try CgroupLayout.detect()).create()
    }

    /// busybox + gwwriter.
    static func makeImage(at path: String, scratch: String) throws {
        guard let busybox = Command.which("busybox") else {
            throw GodwitError("busybox not found", hint: "apt-get install -y busybox-static")
        }
        let fm = FileManager.default
        for dir in ["bin", "tmp", "root", "etc", "proc", "sys", "dev", "var/log"] {
            try fm.createDirectory(atPath: path + "/" + dir, withIntermediateDirectories: true)
        }
        try fm.copyItem(atPath: busybox, toPath: path + "/bin/busybox")
        for applet in ["sh", "cat", "ls", "sleep", "kill", "ps"] {
            try fm.createSymbolicLink(atPath: path + "/bin/" + applet, withDestinationPath: "busybox")
        }
        let writer = try WriterProgram.build(into: scratch)
        try fm.copyItem(atPath: writer, toPath: path + "/bin/gwwriter")
    }

    // MARK: - observing the workload from the host

    /// Host pids of a cgroup's processes with their ns-pids.
    static func processes(of cgroup: Cgroup) -> [TrackedProcess] {
        ContainerProcesses.list(cgroup: cgroup)
    }

    static func counter(rootfs: String, nsPID: pid_t) -> Int {
        Int(HostEnvironment.read(rootfs + "/tmp/counter.\(nsPID)") ?? "") ?? 0
    }

    /// Asks every writer in `cgroup` to verify its memory; returns the verdict lines by ns-pid.
    static func verify(cgroup: Cgroup, rootfs: String) -> [pid_t: String] {
        let procs = processes(of: cgroup)
        for p in procs { try? FileManager.default.removeItem(atPath: rootfs + "/tmp/verify.\(p.nsPID)") }
        for p in procs { kill(p.hostPID, SIGUSR1) }
        var result: [pid_t: String] = [:]
        _ = poll(timeout: 10) {
            for p in procs { result[p.nsPID] = HostEnvironment.read(rootfs + "/tmp/verify.\(p.nsPID)") }
            return result.values.count == procs.count
        }
        return result
    }
}

/// Every resident page of every process's writable private mappings, hashed: what the
/// container's memory is at one moment (read with process_vm_readv).
struct MemorySnapshot {
    /// ns-pid -> vaddr -> XXH3 of the page.
    var pages: [pid_t: [UInt64: UInt64]] = [:]
    var pageCount: Int { pages.values.reduce(0) { $0 + $1.count } }

    /// `like`: read exactly the pages another snapshot has (a restored process may not
    /// have a page resident that was all zeros at the dump: reading it gives zeros).
    static func take(cgroup: Cgroup, like other: MemorySnapshot? = nil) throws -> MemorySnapshot {
        var snap = MemorySnapshot()
        let pageSize = Int(systemPageSize)
        for p in ContainerProcesses.list(cgroup: cgroup) {
            let resident: PageRanges
            if let other {
                resident = PageRanges((other.pages[p.nsPID] ?? [:]).keys.map { $0..<($0 + systemPageSize) })
            } else {
                let maps = try ProcessMaps.read(pid: p.hostPID).filter(\.isWritablePrivate)
                resident = try PagemapReader(pid: p.hostPID).resident(in: PageRanges(maps.map(\.range)))
            }
            var hashes: [UInt64: UInt64] = [:]
            let reader = ProcessMemoryReader(pid: p.hostPID)
            var buffer = [UInt8](repeating: 0, count: 256 * pageSize)
            for chunk in resident.chunks(maxPages: 256) {
                let count = Int(chunk.upperBound - chunk.lowerBound)
                let n = try buffer.withUnsafeMutableBytes { try reader.read(at: chunk.lowerBound, into: UnsafeMutableRawBufferPointer(rebasing: $0[0..<count])) }
                buffer.withUnsafeBytes { b in
                    for off in stride(from: 0, to: n, by: pageSize) {
                        hashes[chunk.lowerBound + UInt64(off)] = PageHash.xxh3(UnsafeRawBufferPointer(rebasing: b[off..<off + pageSize]))
                    }
                }
            }
            snap.pages[p.nsPID] = hashes
        }
        return snap
    }

    /// Pages of `self` whose content differs in `other` (or that `other` lacks), per ns-pid.
    func differences(from other: MemorySnapshot) -> [String] {
        var out: [String] = []
        for (ns, hashes) in pages {
            let theirs = other.pages[ns] ?? [:]
            for (vaddr, h) in hashes where theirs[vaddr] != h {
                out.append("\(ns):0x\(String(vaddr, radix: 16))\(theirs[vaddr] == nil ? " missing" : "")")
            }
        }
        return out.sorted()
    }
}
