import API
import Foundation
import GodwitCore

/// The one place that decides how a container moves, from both hosts' own checks.
public enum MovePlanner {
    /// Strategies this daemon carries out between hosts, in `auto`'s order of preference.
    public static let implemented: [MigrationStrategy] = [.hybrid, .preCopy, .postCopy, .stopAndCopy]

    /// What `auto` needs to know about the container.
    public struct Container: Sendable {
        /// Anonymous memory of the container's cgroup (nil: unknown).
        public var memoryBytes: UInt64?
        public var config: ContainerConfig
        public init(memoryBytes: UInt64?, config: ContainerConfig) { self.memoryBytes = memoryBytes; self.config = config }
    }

    /// The link speed `auto` assumes before anything was measured: 1 Gbit/s.
    static let nominalBytesPerSecond = 125_000_000.0

    /// "A lot of memory": more than stop-and-copy could move within the container's
    /// downtime target (migration.incremental.memory.downtime, 300 ms: ~36 MiB) at 1 Gbit/s.
    public static func largeMemoryThreshold(_ config: ContainerConfig) -> UInt64 {
        UInt64(Double(config.downtimeTargetMilliseconds) / 1000 * nominalBytesPerSecond)
    }

    /// The mode to use, and why; throws (saying which host lacks what, or which key
    /// forbids it) when the requested mode can't run between these two hosts.
    ///
    /// `auto`, following LXD's meaning of the keys: pre-copy rounds only when
    /// migration.incremental.memory is on (LXD's switch for incremental transfer) and the
    /// container has a lot of memory (small ones move within the downtime target anyway);
    /// then hybrid when both hosts support it and the container opted in to post-copy
    /// (migration.postcopy=true), else pre-copy. Otherwise post-copy when opted in and
    /// supported (its frozen time doesn't grow with memory), else stop-and-copy. Safe by
    /// default, as QEMU and LXD are: without the opt-in auto never picks a mode that loses
    /// the container when the link fails after the commit. An explicit `--mode pre-copy` or `hybrid`
    /// runs rounds whatever migration.incremental.memory says: asking for pre-copy is
    /// asking for rounds (their number still follows .goal, .iterations and .downtime).
    public static func plan(requested: MigrationStrategy?, source: PeerCapabilities, destination: PeerCapabilities,
                            container: Container) throws -> (mode: MigrationStrategy, reason: String)
    {
        // CRIU's image and page-server formats change between minor versions (4.1 and 4.2
        // can't exchange pages): both sides must run the same major.minor.
        guard let sv = source.criuVersion, let dv = destination.criuVersion else {
            let host = source.criuVersion == nil ? source.host : destination.host
            throw GodwitError("CRIU is missing or unusable on \(host)", hint: "run `godwit check` there; `make setup` provisions CRIU 4.2")
        }
        func minor(_ v: String) -> String { v.split(separator: ".").prefix(2).joined(separator: ".") }
        guard minor(sv) == minor(dv) else {
            throw GodwitError("CRIU \(sv) on \(source.host) and \(dv) on \(destination.host) can't exchange images",
                              hint: "install the same CRIU minor version on both hosts")
        }
        func check(_ mode: MigrationStrategy) -> String? {
            guard implemented.contains(mode) else {
                return "\(mode.rawValue) between hosts is not implemented yet (available: \(implemented.map(\.rawValue).joined(separator: ", ")))"
            }
            if mode.restoresLazily, !container.config.postCopyAllowed {
                return "migration.postcopy=false forbids post-copy and hybrid for this container"
            }
            let s = source.strategies.first { $0.strategy == mode.rawValue }
            let d = destination.strategies.first { $0.strategy == mode.rawValue }
            guard let s, s.asSource else { return "\(source.host) can't be its source: \(s?.reason ?? "unknown strategy")" }
            guard let d, d.asDestination else { return "\(destination.host) can't be its destination: \(d?.reason ?? "unknown strategy")" }
            // Every restore but stop-and-copy's is lazy (pre-copy's from the local store): CRIU
            // opens its userfaultfd inside the container's user namespace, which the kernel
            // refuses there unless vm.unprivileged_userfaultfd=1.
            if mode.behaviour.restore != .copy, container.config.idmapBase != nil, destination.unprivilegedLazyRestore == false {
                return "\(destination.host) has vm.unprivileged_userfaultfd=0, so CRIU's lazy restore of this unprivileged container (volatile.idmap.base) would fail there: run `make setup` on \(destination.host) (or `sysctl vm.unprivileged_userfaultfd=1`), or move it by stop-and-copy"
            }
            return nil
        }
        if let requested {
            if let why = check(requested) {
                throw GodwitError("\(requested.rawValue) is unavailable: \(why)", hint: "`godwit move --mode auto` picks what both hosts support")
            }
            return (requested, "requested")
        }
        let threshold = largeMemoryThreshold(container.config)
        let memory = container.memoryBytes.map { ByteSize.format($0) } ?? "an unknown amount of memory"
        let large = (container.memoryBytes ?? 0) > threshold
        let sizeText = "the container uses \(memory), " + (large ? "more" : "less") + " than the \(ByteSize.format(threshold)) stop-and-copy moves within migration.incremental.memory.downtime=\(container.config.downtimeTargetMilliseconds) ms at 1 Gbit/s"
        let lazyOK = container.config.postCopyOptedIn
        var candidates: [MigrationStrategy] = (lazyOK ? [.postCopy] : []) + [.stopAndCopy]
        var refused: [String] = []
        if container.config.incrementalMemory {
            if large { candidates = (lazyOK ? [.hybrid] : []) + [.preCopy] + candidates } else { refused.append("no pre-copy: \(sizeText)") }
        } else {
            refused.append("no pre-copy: migration.incremental.memory is off")
        }
        if !lazyOK {
            refused.append("no post-copy or hybrid: they can lose the container if the link fails after the commit; set migration.postcopy=true to let auto pick them")
        }
        for mode in candidates {
            if let why = check(mode) { refused.append(why); continue }
            let others = refused.isEmpty ? "" : " (\(refused.joined(separator: "; ")))"
            let reason: String
            switch mode {
            case .hybrid:
                reason = "auto: hybrid, as migration.incremental.memory is on and \(sizeText): pre-copy rounds while it runs, then a lazy restore served from the copied pages; both hosts support it and migration.postcopy=true accepts its risk"
            case .preCopy:
                reason = "auto: pre-copy, as migration.incremental.memory is on and \(sizeText)" + others
            case .postCopy:
                reason = "auto: post-copy keeps the frozen time independent of memory size; both hosts support it and migration.postcopy=true accepts its risk" + others
            case .stopAndCopy:
                reason = "auto: stop-and-copy" + others
            }
            return (mode, reason)
        }
        throw GodwitError("no migration strategy works between \(source.host) and \(destination.host): \(refused.joined(separator: "; "))",
                          hint: "run `godwit check` on both hosts")
    }
}
