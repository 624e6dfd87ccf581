/// How a container's memory moves, in the user's words (`godwit move --mode ...`). The one
/// strategy type: CLI, REST, planner, engine and benchmark all name strategies with it.
/// What differs between strategies is not branched on here: each case hands out a small
/// `StrategyBehaviour` value, and the engine asks that value.
public enum MigrationStrategy: String, Codable, Sendable, CaseIterable, Comparable {
    case stopAndCopy = "stop-and-copy"
    case preCopy = "pre-copy"
    case postCopy = "post-copy"
    case hybrid

    public var behaviour: any StrategyBehaviour {
        switch self {
        case .stopAndCopy: return StopAndCopy()
        case .preCopy: return PreCopy()
        case .postCopy: return PostCopy()
        case .hybrid: return Hybrid()
        }
    }

    /// Pre-copy rounds while the container runs.
    public var preCopies: Bool { behaviour.roundsWhileRunning }
    /// The destination runs before every page is there: after the commit a lost link loses
    /// the container.
    public var restoresLazily: Bool { behaviour.restore == .lazy }

    /// `--mode` text: a strategy, or "auto" (nil).
    public static func parse(mode text: String) throws -> MigrationStrategy? {
        if text == "auto" { return nil }
        guard let strategy = MigrationStrategy(rawValue: text) else {
            throw GodwitError("unknown mode '\(text)'",
                              hint: "use auto, " + allCases.map(\.rawValue).joined(separator: ", "))
        }
        return strategy
    }

    public static func < (a: MigrationStrategy, b: MigrationStrategy) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// How the destination gets the memory the final dump left on the frozen source.
public enum RestoreKind: String, Sendable {
    /// Fetch every page the page store lacks, rebuild CRIU's images, restore: nothing is
    /// left on the source when the destination runs, and nothing depends on the daemon
    /// (stop-and-copy).
    case copy
    /// Fetch every page the page store lacks (nothing is left on the source when the
    /// destination runs), then restore behind `criu lazy-pages` served from the local
    /// store alone: no memory-sized work in the freeze (pre-copy). Until every page is in
    /// the tasks they depend on this daemon, as a lazy restore does.
    case localLazy
    /// Restore at once behind `criu lazy-pages`; the rest arrives on fault and in the
    /// background after the commit (post-copy, hybrid).
    case lazy
}

/// What happens to the pages the final scan (container frozen) finds dirty.
public enum FinalDirtySet: String, Sendable {
    /// No rounds ran: there is no final scan.
    case none
    /// Sent right behind the scan, before the restore: the destination never fetches them.
    case inline
    /// Only invalidated before the restore; their contents are pushed in the background
    /// while the destination already runs (lazily restored, it faults on what is missing).
    case pushed
}

/// What one strategy does differently. Small values, no logic: the engine's source and
/// destination halves read them at the few places strategies differ.
public protocol StrategyBehaviour: Sendable {
    var strategy: MigrationStrategy { get }
    var roundsWhileRunning: Bool { get }
    var finalDirtySet: FinalDirtySet { get }
    var restore: RestoreKind { get }
}

public struct StopAndCopy: StrategyBehaviour {
    public var strategy: MigrationStrategy { .stopAndCopy }
    public var roundsWhileRunning: Bool { false }
    public var finalDirtySet: FinalDirtySet { .none }
    public var restore: RestoreKind { .copy }
}

public struct PreCopy: StrategyBehaviour {
    public var strategy: MigrationStrategy { .preCopy }
    public var roundsWhileRunning: Bool { true }
    public var finalDirtySet: FinalDirtySet { .inline }
    public var restore: RestoreKind { .localLazy }
}

public struct PostCopy: StrategyBehaviour {
    public var strategy: MigrationStrategy { .postCopy }
    public var roundsWhileRunning: Bool { false }
    public var finalDirtySet: FinalDirtySet { .none }
    public var restore: RestoreKind { .lazy }
}

public struct Hybrid: StrategyBehaviour {
    public var strategy: MigrationStrategy { .hybrid }
    public var roundsWhileRunning: Bool { true }
    public var finalDirtySet: FinalDirtySet { .pushed }
    public var restore: RestoreKind { .lazy }
}
