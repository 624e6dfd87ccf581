import API
import Checkpoint
import Foundation
import GodwitCore
import Migration
import Runtime

/// The source side of a container, as a move needs it.
public struct MigrationSourceSide: Sendable {
    public var cgroup: Cgroup
    public var initPID: pid_t
    /// What the filesystem sync copies: the overlay's upper directory (the container's own
    /// changes; the image is on both hosts), or the whole rootfs for copied rootfs.
    public var syncDirectory: String
    public var criu: CRIU
}

/// What a driver must do beyond the ContainerDriver basics to move containers between
/// hosts. Only the real runtime does; a daemon whose driver doesn't conform refuses moves.
public protocol MigrationDriver: ContainerDriver {
    func migrationSource(_ spec: DriverSpec, init: ProcessIdentity) throws -> MigrationSourceSide
    /// The container's cgroup, whatever state its processes are in (recovery after a crash).
    func migrationCgroup(_ spec: DriverSpec) throws -> Cgroup
    /// Creates the incoming container's directory and returns where the filesystem sync
    /// writes (mounted nothing yet: the sync writes into an overlay's upper directory).
    func prepareIncoming(_ spec: DriverSpec) throws -> String
    /// Mounts the rootfs, creates the cgroup, and says how CRIU restores here: veth on this
    /// host's bridge, cgroups under this host's parent.
    func incomingTarget(_ spec: DriverSpec, images: String, store: String) throws -> IncomingTarget
    /// Records the restored container (limits applied) so it is managed like any other.
    func adoptIncoming(_ spec: DriverSpec, pid: pid_t) throws -> ProcessIdentity
}

extension RuntimeDriver: MigrationDriver {
    public func migrationSource(_ spec: DriverSpec, init initProcess: ProcessIdentity) throws -> MigrationSourceSide {
        let container = try runtime.adopt(name: spec.name)
        guard container.initProcess == initProcess else {
            throw GodwitError("container \(spec.name) runs as pid \(container.initPID), the daemon recorded \(initProcess.pid)")
        }
        let rootfs = container.rootfs
        return MigrationSourceSide(cgroup: container.cgroup, initPID: container.initPID,
                                   syncDirectory: rootfs.kind == .overlay ? rootfs.upperPath : rootfs.path,
                                   criu: try CRIU.locate(setting: criuSetting))
    }

    public func migrationCgroup(_ spec: DriverSpec) throws -> Cgroup {
        runtime.cgroup(for: try containerSpec(spec).name)
    }

    public func prepareIncoming(_ spec: DriverSpec) throws -> String {
        let cspec = try containerSpec(spec)
        let rootfs = runtime.rootfs(for: cspec)
        let target = rootfs.kind == .overlay ? rootfs.upperPath : rootfs.path
        try FileManager.default.createDirectory(atPath: target, withIntermediateDirectories: true)
        return target
    }

    public func incomingTarget(_ spec: DriverSpec, images: String, store: String) throws -> IncomingTarget {
        let cspec = try containerSpec(spec)
        let criu = try CRIU.locate(setting: criuSetting)
        let rootfs = runtime.rootfs(for: cspec)
        try rootfs.prepare(spawnHelper: runtime.configuration.spawnHelper)
        let cgroup = runtime.cgroup(for: cspec.name)
        try cgroup.create()
        var options = RestoreOptions(imagesDirectory: images, rootfs: rootfs.path, pidFile: images + "/restore.pid")
        // CRIU brings back the user namespace with the map it dumped: the same range here
        // (reserved when the move began), and an idmapped root made with it.
        options.unprivilegedRoot = cspec.security.idmap?.hostBase
        // The source's cgroup path differs (another parent, maybe another name).
        options.cgroupRoot = "/" + cgroup.path
        options.cgroup = cgroup
        options.veths = try restoreVeths(cspec)
        return IncomingTarget(criu: criu, restore: options, cgroup: cgroup, storeDirectory: store)
    }

    public func adoptIncoming(_ spec: DriverSpec, pid: pid_t) throws -> ProcessIdentity {
        let cspec = try containerSpec(spec)
        try runtime.cgroup(for: cspec.name).apply(cspec.limits)
        return try runtime.adopt(spec: cspec, initPID: pid).initProcess
    }
}
