import GodwitCore

/// The one place that decides, from measured capabilities, which migration strategies a
/// host supports and which dirty tracker pre-copy uses. Pure logic, so unit tests can feed
/// it any host.
public enum StrategyPlanner {
    /// The capabilities the decision depends on (a subset of HostReport, easy to fake).
    public struct Inputs: Sendable {
        public var criu: ProbeResult
        public var criuLazyPages: ProbeResult
        public var namespaces: ProbeResult
        public var pipeSize: ProbeResult
        public var softDirty: ProbeResult
        public var uffdWPTracking: ProbeResult
        public var processVMReadv: ProbeResult

        public init(criu: ProbeResult, criuLazyPages: ProbeResult, namespaces: ProbeResult, pipeSize: ProbeResult,
                    softDirty: ProbeResult, uffdWPTracking: ProbeResult, processVMReadv: ProbeResult) {
            self.criu = criu; self.criuLazyPages = criuLazyPages; self.namespaces = namespaces
            self.pipeSize = pipeSize; self.softDirty = softDirty
            self.uffdWPTracking = uffdWPTracking; self.processVMReadv = processVMReadv
        }
    }

    /// Preferred order: uffd-wp is exact and costs ~0.7 us per first write; soft-dirty is
    /// exact but needs a kernel option arm64 and this project's kernels lack; hashing reads
    /// all memory every round.
    public static func dirtyTracker(_ inputs: Inputs) -> DirtyTrackerKind? {
        if inputs.uffdWPTracking.available { return .uffdWP }
        if inputs.softDirty.available { return .softDirty }
        if inputs.processVMReadv.available { return .hashing }
        return nil
    }

    public static func strategies(_ inputs: Inputs) -> [StrategySupport] {
        // Every strategy ends in a CRIU dump on the source and a CRIU restore on the destination.
        let base: ProbeResult? = !inputs.criu.available ? .no("CRIU unusable: \(inputs.criu.detail)")
            : !inputs.namespaces.available ? .no("namespaces unavailable: \(inputs.namespaces.detail)")
            : nil
        let ready = ProbeResult.yes("CRIU dump/restore")

        let stopAndCopy = StrategySupport(strategy: .stopAndCopy, source: base ?? ready, destination: base ?? ready)

        let tracker = dirtyTracker(inputs)
        let preSource: ProbeResult = base ?? (tracker.map { .yes("dirty tracker: \($0.rawValue)") }
            ?? .no("no dirty tracker: no uffd-wp (\(inputs.uffdWPTracking.detail)), no soft-dirty, no process_vm_readv"))
        // The destination only stores pages and restores: it needs no tracker.
        let preCopy = StrategySupport(strategy: .preCopy, source: preSource, destination: base ?? .yes("page store + CRIU restore"))

        let postSource: ProbeResult = base ?? (inputs.pipeSize.available
            ? .yes("CRIU lazy dump + page server") : .no("lazy dumps need 4 MiB pipes: \(inputs.pipeSize.detail)"))
        let postDestination: ProbeResult = base ?? (inputs.criuLazyPages.available
            ? .yes("CRIU lazy restore (userfaultfd)") : .no("CRIU lazy pages unsupported: \(inputs.criuLazyPages.detail)"))
        let postCopy = StrategySupport(strategy: .postCopy, source: postSource, destination: postDestination)

        let hybridSource: ProbeResult = !preSource.available ? preSource : !postSource.available ? postSource
            : .yes("pre-copy (\(tracker?.rawValue ?? "?")) then lazy dump")
        let hybridDestination: ProbeResult = postDestination.available
            ? .yes("lazy restore served from the pre-copied page store") : postDestination
        let hybrid = StrategySupport(strategy: .hybrid, source: hybridSource, destination: hybridDestination)

        return [stopAndCopy, preCopy, postCopy, hybrid]
    }
}
