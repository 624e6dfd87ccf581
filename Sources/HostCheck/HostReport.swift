import GodwitCore

/// Everything `godwit check` measured on one host. Migration negotiation exchanges these,
/// so a plan only uses what both hosts support.
public struct HostReport: Codable, Sendable {
    public var hostname: String
    public var kernel: String
    public var architecture: String
    public var root: Bool
    public var criu: CRIUReport
    public var memory: MemoryReport
    public var namespaces: ProbeResult
    public var cgroups: CgroupReport
    public var nftables: ProbeResult
    /// Lazy (post-copy) dumps need pipes of 4 MiB; without CAP_SYS_RESOURCE only the sysctl allows that.
    public var pipeSize: ProbeResult
    /// The tracker pre-copy would use here, if any.
    public var dirtyTracker: DirtyTrackerKind?
    public var strategies: [StrategySupport]
    /// User namespaces, idmapped mounts on the images' file system, the subordinate range,
    /// and whether such containers move lazily.
    public var unprivileged: UnprivilegedReport
    /// False when this host cannot run containers at all: `godwit check` then exits non-zero.
    public var canRunContainers: Bool

    public func support(for strategy: MigrationStrategy) -> StrategySupport? {
        strategies.first { $0.strategy == strategy }
    }
}

public struct CRIUReport: Codable, Sendable {
    public var path: String?
    public var source: String?
    public var version: String?
    /// Found, new enough, and `criu check` passes.
    public var usable: ProbeResult
    /// `criu check --feature uffd-noncoop`: lazy restore of multi-process trees.
    public var lazyPages: ProbeResult

    public var isUsable: Bool { usable.available }
}

public struct MemoryReport: Codable, Sendable {
    public var softDirty: ProbeResult
    public var userfaultfd: ProbeResult
    public var pagemapScan: ProbeResult
    public var ptrace: ProbeResult
    public var pidfdGetfd: ProbeResult
    public var uffdWriteProtectTracking: ProbeResult
    public var processVMReadv: ProbeResult
}

/// The cgroup layout as reported (the layout itself is GodwitCore's CgroupLayout).
public struct CgroupReport: Codable, Sendable, Equatable {
    public var kind: String
    public var unifiedPath: String?
    public var freezer: String
    public var v1Controllers: [String: String]

    public init(_ layout: CgroupLayout?) {
        kind = layout?.kind.rawValue ?? "none"
        unifiedPath = layout?.unified
        freezer = layout?.freezerDescription ?? "none"
        v1Controllers = layout?.v1 ?? [:]
    }

    public var available: Bool { kind != "none" }
}

/// Whether one strategy can run with this host as source and as destination.
public struct StrategySupport: Codable, Sendable {
    public var strategy: MigrationStrategy
    public var source: ProbeResult
    public var destination: ProbeResult
}
