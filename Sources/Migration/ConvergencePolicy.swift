import Foundation
import API

/// When to stop pre-copy rounds, from LXD's keys plus Godwit's own. Pure logic: fed one
/// observation per round, it answers "another round" (maybe with a CPU throttle step) or
/// "final phase", always with a reason a human can read.
public struct ConvergenceSettings: Sendable, Equatable {
    /// migration.incremental.memory: false means no rounds at all (stop-and-copy).
    public var enabled: Bool
    /// .goal: stop once this percentage of pages was unchanged since the previous round.
    public var goalPercent: Int
    /// .iterations: at most this many rounds (1 = exactly one round).
    public var maxRounds: Int
    /// .downtime: stop once the predicted final pause is below this.
    public var downtimeTarget: Double
    /// .autoconverge: throttle the container's CPU when rounds stop shrinking.
    public var autoConverge: Bool
    /// Rounds without enough improvement before we call it a stall.
    public var stallRounds = 3
    /// "Enough improvement": the dirty set shrinks by at least this fraction.
    public var minImprovement = 0.10
    /// CPU throttle steps, as percentages of the container's original CPU allowance.
    public var throttleSteps: [Int] = [80, 60, 40, 20]

    public init(enabled: Bool = true, goalPercent: Int = 70, maxRounds: Int = 10,
                downtimeTarget: Double = 0.3, autoConverge: Bool = true) {
        self.enabled = enabled
        self.goalPercent = goalPercent
        self.maxRounds = maxRounds
        self.downtimeTarget = downtimeTarget
        self.autoConverge = autoConverge
    }

    /// From a container's configuration keys (defaults: LXD's 70 % and 10 rounds, 300 ms).
    public init(config: ContainerConfig) {
        self.init(enabled: config.incrementalMemory, goalPercent: config.incrementalGoalPercent,
                  maxRounds: config.incrementalIterations,
                  downtimeTarget: Double(config.downtimeTargetMilliseconds) / 1000, autoConverge: config.autoConverge)
    }

    /// goal=100 asks for rounds until nothing is dirty (or the limit): the time-based and
    /// stall shortcuts would override that, so they are off then.
    public var exhaustive: Bool { goalPercent >= 100 }
}

/// One finished round, as the policy sees it.
public struct RoundObservation: Sendable, Equatable {
    public var round: Int
    /// Pages the tracker reported dirty for this round (round 1: every resident page).
    public var dirtyPages: Int
    /// Resident pages at the scan.
    public var residentPages: Int
    public var bytesSent: UInt64
    public var seconds: Double

    public init(round: Int, dirtyPages: Int, residentPages: Int, bytesSent: UInt64, seconds: Double) {
        self.round = round
        self.dirtyPages = dirtyPages
        self.residentPages = residentPages
        self.bytesSent = bytesSent
        self.seconds = seconds
    }
}

public enum ConvergenceDecision: Sendable, Equatable {
    /// Do another round; `throttlePercent` set: first lower the CPU allowance to that.
    case anotherRound(reason: String, throttlePercent: Int?)
    case finalPhase(reason: String)

    public var reason: String {
        switch self {
        case .anotherRound(let r, _), .finalPhase(let r): return r
        }
    }
    public var isFinal: Bool { if case .finalPhase = self { return true } else { return false } }
}

public struct ConvergencePolicy: Sendable {
    public let settings: ConvergenceSettings
    public let pageSize: UInt64
    private var previousDirty: Int?
    private var stalled = 0
    private var throttleIndex = 0
    /// Bytes and seconds of all rounds so far: the bandwidth estimate.
    private var totalBytes: UInt64 = 0
    private var totalSeconds = 0.0
    public private(set) var currentThrottle: Int?

    public init(settings: ConvergenceSettings, pageSize: UInt64 = 4096) {
        self.settings = settings
        self.pageSize = pageSize
    }

    /// Before any round: whether to pre-copy at all.
    public var shouldStart: (Bool, String) {
        settings.enabled ? (true, "migration.incremental.memory is on: pre-copy up to \(settings.maxRounds) round(s)")
                         : (false, "migration.incremental.memory is off: no pre-copy rounds")
    }

    /// Measured bytes per second over all rounds (nil before any data moved).
    public var bandwidth: Double? { totalSeconds > 0 && totalBytes > 0 ? Double(totalBytes) / totalSeconds : nil }

    /// The pause the final phase would need for `dirtyPages` at the measured bandwidth.
    public func predictedPause(dirtyPages: Int) -> Double? {
        bandwidth.map { Double(UInt64(dirtyPages) * pageSize) / $0 }
    }

    public mutating func decide(after o: RoundObservation) -> ConvergenceDecision {
        totalBytes += o.bytesSent
        totalSeconds += o.seconds
        let dirtyBytes = UInt64(o.dirtyPages) * pageSize
        let head = "round \(o.round): \(Self.grouped(o.dirtyPages)) pages dirty (\(Self.bytes(dirtyBytes)))"
        defer { previousDirty = o.dirtyPages }

        if o.round >= settings.maxRounds {
            return .finalPhase(reason: "\(head) → final phase: reached migration.incremental.memory.iterations=\(settings.maxRounds)")
        }
        // Round 1 sends everything resident: nothing is known yet about what changes.
        guard o.round > 1, previousDirty != nil else {
            return .anotherRound(reason: "\(head), first full copy → next round", throttlePercent: nil)
        }
        let unchanged = o.residentPages > 0 ? 100.0 * Double(max(0, o.residentPages - o.dirtyPages)) / Double(o.residentPages) : 100.0
        let unchangedText = String(format: "%.1f %% unchanged", unchanged)
        if o.dirtyPages == 0 {
            return .finalPhase(reason: "\(head), 100 % unchanged → final phase: nothing left dirty")
        }
        if settings.exhaustive {
            return .anotherRound(reason: "\(head), \(unchangedText) < goal 100 % → next round", throttlePercent: nil)
        }
        if unchanged >= Double(settings.goalPercent) {
            // The goal alone (LXD's rule) can stop with a dirty set that still needs far
            // more than the downtime target in the freeze. While another round at least
            // halves the dirty set it pays for itself: it copies those pages now, with the
            // container running, and the final set shrinks with it.
            if let pause = predictedPause(dirtyPages: o.dirtyPages), pause > settings.downtimeTarget,
               let previous = previousDirty, o.dirtyPages * 2 <= previous {
                return .anotherRound(reason: "\(head), \(unchangedText) ≥ goal \(settings.goalPercent) % but predicted pause \(Self.millis(pause)) > downtime \(Self.millis(settings.downtimeTarget)) and the dirty set halves each round → next round",
                                     throttlePercent: nil)
            }
            return .finalPhase(reason: "\(head), \(unchangedText) ≥ goal \(settings.goalPercent) % → final phase")
        }
        if let pause = predictedPause(dirtyPages: o.dirtyPages), pause <= settings.downtimeTarget {
            return .finalPhase(reason: "\(head), \(unchangedText); predicted pause \(Self.millis(pause)) ≤ downtime \(Self.millis(settings.downtimeTarget)) → final phase")
        }
        // Stall detection: the dirty set must shrink by minImprovement each round.
        if let previous = previousDirty, Double(o.dirtyPages) > Double(previous) * (1 - settings.minImprovement) {
            stalled += 1
        } else {
            stalled = 0
        }
        let pauseText = predictedPause(dirtyPages: o.dirtyPages).map { "predicted pause \(Self.millis($0))" } ?? "no bandwidth yet"
        if stalled >= settings.stallRounds {
            if settings.autoConverge, throttleIndex < settings.throttleSteps.count {
                let step = settings.throttleSteps[throttleIndex]
                throttleIndex += 1
                stalled = 0
                currentThrottle = step
                return .anotherRound(reason: "\(head), \(unchangedText), \(pauseText); \(settings.stallRounds) rounds without \(Int(settings.minImprovement * 100)) % improvement → throttle CPU to \(step) % and continue",
                                     throttlePercent: step)
            }
            let why = settings.autoConverge ? "not converging even at the lowest CPU throttle" : "not converging (autoconverge off)"
            return .finalPhase(reason: "\(head), \(unchangedText), \(pauseText); \(why) → final phase")
        }
        return .anotherRound(reason: "\(head), \(unchangedText) < goal \(settings.goalPercent) %, \(pauseText) > \(Self.millis(settings.downtimeTarget)) → next round",
                             throttlePercent: nil)
    }

    static func grouped(_ n: Int) -> String {
        let digits = String(n)
        var out = ""
        for (i, c) in digits.reversed().enumerated() {
            if i > 0 && i % 3 == 0 { out.append(",") }
            out.append(c)
        }
        return String(out.reversed())
    }

    static func bytes(_ b: UInt64) -> String { ByteSize.format(b) }
    static func millis(_ s: Double) -> String { String(format: "%.0f ms", s * 1000) }
}
