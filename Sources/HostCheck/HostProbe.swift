import Foundation
import Checkpoint
import GodwitCore
import Memory

/// Measures this host by exercising each capability: a namespace is created, a page is
/// written and tracked, CRIU is asked. Nothing is read from kernel config files.
public enum HostProbe {
    /// `stateDirectory`: the daemon's, whose images/ file system must take idmapped mounts.
    public static func run(criuSetting: String? = nil, stateDirectory: String = "/var/lib/godwit",
                           spawnHelper: String = GodwitPaths.sibling("godwit-spawn")) -> HostReport {
        let criu = probeCRIU(setting: criuSetting)
        let memory = MemoryReport(
            softDirty: MemoryProbes.softDirty(),
            userfaultfd: MemoryProbes.userfaultfd(),
            pagemapScan: MemoryProbes.pagemapScan(),
            ptrace: MemoryProbes.ptraceInjection(),
            pidfdGetfd: MemoryProbes.pidfdGetfd(),
            uffdWriteProtectTracking: MemoryProbes.uffdWriteProtectTracking(),
            processVMReadv: MemoryProbes.processVMReadv())
        let namespaces = probeNamespaces()
        let pipeSize = probePipeSize()
        let inputs = StrategyPlanner.Inputs(
            criu: criu.usable, criuLazyPages: criu.lazyPages, namespaces: namespaces, pipeSize: pipeSize,
            softDirty: memory.softDirty, uffdWPTracking: memory.uffdWriteProtectTracking,
            processVMReadv: memory.processVMReadv)
        let cgroups = CgroupReport(try? CgroupLayout.detect())
        var name = utsname()
        uname(&name)
        return HostReport(
            hostname: ProcessInfo.processInfo.hostName,
            kernel: field(&name.release), architecture: field(&name.machine),
            root: HostEnvironment.isRoot,
            criu: criu, memory: memory, namespaces: namespaces, cgroups: cgroups,
            nftables: probeNftables(criu: criu),
            pipeSize: pipeSize,
            dirtyTracker: StrategyPlanner.dirtyTracker(inputs),
            strategies: StrategyPlanner.strategies(inputs),
            unprivileged: UnprivilegedProbe.run(stateDirectory: stateDirectory, spawnHelper: spawnHelper),
            canRunContainers: HostEnvironment.isRoot && namespaces.available && cgroups.available)
    }

    private static func field<T>(_ tuple: inout T) -> String {
        withUnsafeBytes(of: &tuple) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
    }

    static func probeCRIU(setting: String?) -> CRIUReport {
        let unusable = { (why: String) in CRIUReport(path: nil, source: nil, version: nil, usable: .no(why), lazyPages: .no(why)) }
        let binary: CRIUBinary
        do { binary = try CRIUBinary.locate(setting: setting) } catch {
            return unusable("not found: run `make setup`")
        }
        var report = CRIUReport(path: binary.path, source: binary.source.rawValue, version: nil,
                                usable: .no(""), lazyPages: .no("CRIU unusable"))
        do {
            let version = try binary.version()
            report.version = version.description
            guard version >= CRIUVersion.minimum else {
                report.usable = .no("version \(version) is older than \(CRIUVersion.minimum): run `make setup`")
                return report
            }
        } catch {
            report.usable = .no("\(error)")
            return report
        }
        report.usable = binary.check()
        if report.usable.available { report.lazyPages = binary.check(feature: "uffd-noncoop") }
        return report
    }

    /// Creates every namespace a container uses, in a throwaway child.
    static func probeNamespaces() -> ProbeResult {
        let argv = ["unshare", "--pid", "--mount", "--uts", "--ipc", "--net", "--cgroup", "--fork", "true"]
        guard let result = try? Command.run(argv) else { return .no("`unshare` not found: run `make setup`") }
        return result.succeeded ? .yes("pid, mnt, uts, ipc, net, cgroup created")
            : .no("unshare failed: \(result.lastErrorLine)")
    }

    /// CRIU locks the container's network during dump with nftables (no iptables here).
    static func probeNftables(criu: CRIUReport) -> ProbeResult {
        if criu.isUsable, let path = criu.path {
            return CRIUBinary(path: path, source: .setting).check(feature: "network_lock_nftables")
        }
        guard let result = try? Command.run(["unshare", "--net", "nft", "add", "table", "inet", "godwit_probe"]) else {
            return .no("`nft` not found")
        }
        return result.succeeded ? .yes("nft works in a new netns") : .no(result.lastErrorLine)
    }

    /// Asks for a 4 MiB pipe, which is what CRIU's lazy dump does.
    static func probePipeSize() -> ProbeResult {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { return .no("pipe() failed") }
        defer { close(fds[0]); close(fds[1]) }
        let wanted: Int32 = 4 << 20
        let F_SETPIPE_SZ: Int32 = 1031
        if fcntl(fds[0], F_SETPIPE_SZ, wanted) >= 0 { return .yes("4 MiB pipes allowed") }
        let max = HostEnvironment.read("/proc/sys/fs/pipe-max-size") ?? "?"
        return .no("fs.pipe-max-size is \(max) and CAP_SYS_RESOURCE is missing: run `make setup` (sets it to 4194304)")
    }
}
