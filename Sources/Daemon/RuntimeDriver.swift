import API
import Checkpoint
import Foundation
import GodwitCore
import Runtime

/// The real ContainerDriver: namespaces, cgroups and veths through Runtime (godwit-spawn),
/// stateful stop/start through the Checkpoint module's CRIU engine.
///
/// Concurrency model: no state of its own (every stored property is an immutable Sendable
/// `let`). The daemon's tasks call it concurrently, for different containers
/// (ContainerService's busy marks keep two operations off one container); blocking work
/// runs on threads through `blocking`.
public final class RuntimeDriver: ContainerDriver, Sendable {
    public let kind = "runtime"
    let runtime: ContainerRuntime
    let criuSetting: String?

    /// The init every image provides (the busybox image's /sbin/init; imported images bring theirs).
    static let initCommand = ["/sbin/init"]

    public init(stateDirectory: URL, cgroupParent: String?, criu: String?) throws {
        runtime = try ContainerRuntime(RuntimeConfiguration(
            stateRoot: stateDirectory.appendingPathComponent("containers").path,
            cgroupParent: cgroupParent ?? "godwit"))
        criuSetting = criu
    }

    func containerSpec(_ spec: DriverSpec) throws -> ContainerSpec {
        let network = try spec.network.map { lease in
            NetworkSpec(bridge: lease.bridge, address: try IPv4Interface("\(lease.address)/\(lease.prefixLength)"),
                        gateway: try lease.gateway.map { try IPv4Address($0) }, mac: try MACAddress(lease.mac))
        }
        let limits = ResourceLimits(memoryBytes: spec.config.memoryLimit, pidsMax: spec.config.processLimit,
                                    cpuQuota: spec.config.cpuLimit)
        let system = ContainerSpec.initIsSystemd(imageRootfs: spec.imageRootfs.path)
        return try ContainerSpec(name: spec.name, image: spec.imageRootfs.path, initCommand: Self.initCommand,
                                 environment: spec.config.environment, network: network, limits: limits,
                                 system: system, security: Self.securityProfile(spec.config, system: system))
    }

    /// The container's confinement from its security.* keys. A container without a map
    /// base is privileged: by choice (security.privileged), or launched before Godwit had
    /// user namespaces. no_new_privs only where the init is not systemd, whose setuid
    /// programs (su, sudo) and services' privilege changes it would break.
    static func securityProfile(_ config: ContainerConfig, system: Bool) throws -> SecurityProfile {
        let idmap = try config.privileged ? nil : config.idmapBase.map { try IdMap(hostBase: $0) }
        return SecurityProfile(idmap: idmap, droppedCapabilities: config.droppedCapabilities,
                               deniedSyscalls: config.deniedSyscalls, noNewPrivileges: !system)
    }


    private func running(_ spec: DriverSpec, _ initProcess: ProcessIdentity) throws -> RunningContainer {
        let container = try runtime.adopt(name: spec.name)
        guard container.initPID == initProcess.pid else {
            throw GodwitError("container \(spec.name) runs as pid \(container.initPID), the daemon recorded \(initProcess.pid)")
        }
        return container
    }

    public func create(_ spec: DriverSpec) async throws {
        let cspec = try containerSpec(spec)
        try await blocking { [runtime] in
            try FileManager.default.createDirectory(atPath: runtime.directory(for: cspec.name), withIntermediateDirectories: true)
            try runtime.rootfs(for: cspec).prepare(spawnHelper: runtime.configuration.spawnHelper)
        }
    }

    public func start(_ spec: DriverSpec) async throws -> ProcessIdentity {
        let cspec = try containerSpec(spec)
        let container = try await blocking { [runtime] in try runtime.start(cspec) }
        return container.initProcess
    }

    public func stop(_ spec: DriverSpec, init initProcess: ProcessIdentity, timeout: Duration, force: Bool) async throws {
        let container = try running(spec, initProcess)
        let seconds = force ? 0 : Double(timeout.components.seconds)
        try await blocking { [runtime] in try runtime.stop(container, timeout: seconds) }
    }

    public func freeze(_ spec: DriverSpec, init initProcess: ProcessIdentity) async throws {
        let cgroup = runtime.cgroup(for: spec.name)
        try await blocking { try cgroup.freeze() }
    }

    public func unfreeze(_ spec: DriverSpec, init initProcess: ProcessIdentity) async throws {
        let cgroup = runtime.cgroup(for: spec.name)
        try await blocking { try cgroup.thaw() }
    }

    public func checkpoint(_ spec: DriverSpec, init initProcess: ProcessIdentity, to directory: URL) async throws {
        let container = try running(spec, initProcess)
        let criu = try CRIU.locate(setting: criuSetting)
        var options = DumpOptions(pid: container.initPID, imagesDirectory: directory.path)
        options.freezerCgroup = container.cgroup.directory(for: "freezer")
        options.cgroup = container.cgroup
        try await blocking { [runtime, options] in
            _ = try criu.dump(options)
            // The dump killed the tasks; what stopping leaves (orphans, the veth) goes too.
            try runtime.stop(container, timeout: 0)
        }
    }

    public func restore(_ spec: DriverSpec, from directory: URL) async throws -> ProcessIdentity {
        let cspec = try containerSpec(spec)
        let criu = try CRIU.locate(setting: criuSetting)
        let restored = try await blocking { [self, runtime] () throws -> RunningContainer in
            let rootfs = runtime.rootfs(for: cspec)
            try rootfs.prepare(spawnHelper: runtime.configuration.spawnHelper)
            let cgroup = runtime.cgroup(for: cspec.name)
            try cgroup.create()
            var options = RestoreOptions(imagesDirectory: directory.path, rootfs: rootfs.path,
                                         pidFile: directory.appendingPathComponent("restore.pid").path)
            options.cgroup = cgroup
            options.unprivilegedRoot = cspec.security.idmap?.hostBase
            options.veths = try self.restoreVeths(cspec)
            let (pid, _) = try criu.restore(options)
            try cgroup.apply(cspec.limits)
            return try runtime.adopt(spec: cspec, initPID: pid)
        }
        return restored.initProcess
    }

    /// The container's eth0 for a restore on this host: the old host end goes; CRIU makes
    /// a new pair on this host's bridge, or, in a user namespace, moves in one made here
    /// (VethMapping.precreatedPeer). Both the stateful start and a move's destination use it.
    func restoreVeths(_ cspec: ContainerSpec) throws -> [VethMapping] {
        guard let network = cspec.network, let veth = runtime.veth(for: cspec) else { return [] }
        let host = runtime.configuration.hostNetwork
        try veth.remove(in: host)
        let peer = cspec.security.idmap == nil ? nil : try veth.precreate(bridge: network.bridge, in: host)
        return [VethMapping(containerInterface: Veth.containerName, hostInterface: veth.hostName,
                            bridge: network.bridge, precreatedPeer: peer)]
    }

    public func reconfigure(_ spec: DriverSpec, init initProcess: ProcessIdentity?) async throws {
        guard initProcess != nil else { return }
        let cspec = try containerSpec(spec)
        try runtime.cgroup(for: spec.name).apply(cspec.limits)
    }

    public func execPlan(_ spec: DriverSpec, init initProcess: ProcessIdentity, command: [String],
                         environment: [String: String], terminal: Bool) throws -> ExecPlan {
        let container = try running(spec, initProcess)
        var env = container.spec.environment
        env.merge(environment) { _, new in new }
        let args = try runtime.execArguments(container, command, environment: env, terminal: terminal)
        return ExecPlan(argv: [runtime.configuration.spawnHelper] + args, environment: env, pid: container.initPID)
    }

    public func destroy(_ spec: DriverSpec) async throws {
        try await blocking { [runtime] in try runtime.destroy(name: spec.name) }
    }

    public func isAlive(_ spec: DriverSpec, init initProcess: ProcessIdentity) -> Bool {
        guard let container = try? runtime.adopt(name: spec.name) else { return false }
        return container.initProcess == initProcess
    }

    public func checkpointCheck(_ spec: DriverSpec, init initProcess: ProcessIdentity) throws -> CheckpointCheck {
        let container = try running(spec, initProcess)
        let tasks = container.cgroup.processes()
        let blockers = CheckpointReadiness.blockers(initPID: container.initPID, tasks: tasks).map {
            CheckpointCheck.Blocker(kind: $0.kind, pid: $0.pid, command: $0.command, detail: $0.detail, criuLine: $0.criuLine)
        }
        return CheckpointCheck(name: spec.name, processes: tasks.count, blockers: blockers)
    }

    public func consoleLog(_ spec: DriverSpec) -> URL {
        URL(fileURLWithPath: runtime.directory(for: spec.name) + "/rootfs" + ContainerRuntime.consolePath)
    }
}
