import Foundation
import GodwitCore
import Memory

/// What the pre-copy rounds did.
public struct PreCopyReport: Sendable {
    public var rounds: [RoundStats] = []
    /// One line per round: the policy's decision and why.
    public var decisions: [String] = []
    public var finalReason = ""
    /// Lowest CPU allowance auto-converge applied (percent), if any.
    public var lowestThrottle: Int?
    public var tracker: DirtyTrackerKind

    public var totalBytes: UInt64 { rounds.reduce(0) { $0 + $1.bytesSent } }
    public var totalDataPages: Int { rounds.reduce(0) { $0 + $1.dataPages } }
}

/// The source's pre-copy loop: scan, send, ask the policy, maybe throttle, repeat. The
/// container runs throughout; the CPU allowance is always put back when the loop ends,
/// also when it fails.
public final class PreCopySession {
    public let tracker: DirtyTracker
    public let sender: PreCopySender
    public private(set) var policy: ConvergencePolicy
    public let throttle: CPUThrottle?
    public let progress: ((String) -> Void)?
    /// Called as each round goes out: the round's progress and the bytes sent of it.
    public var roundProgress: ((RoundProgress, UInt64) -> Void)?
    /// Called before each round's scan with its number (fault injection: a pause or a throw).
    public var beforeRound: ((Int) throws -> Void)?

    public init(tracker: DirtyTracker, sender: PreCopySender, settings: ConvergenceSettings,
                throttle: CPUThrottle? = nil, progress: ((String) -> Void)? = nil) {
        self.tracker = tracker
        self.sender = sender
        policy = ConvergencePolicy(settings: settings, pageSize: systemPageSize)
        self.throttle = throttle
        self.progress = progress
    }

    public func run() throws -> PreCopyReport {
        var report = PreCopyReport(tracker: tracker.preferredKind)
        let (start, why) = policy.shouldStart
        report.decisions.append(why)
        progress?(why)
        guard start else {
            report.finalReason = why
            return report
        }
        defer {
            do { try throttle?.restore() } catch { progress?("could not restore the CPU allowance: \(error)") }
        }
        var round = 0
        var lastScan: UInt64?
        while true {
            round += 1
            try beforeRound?(round)
            let scannedAt = DispatchTime.now().uptimeNanoseconds
            // Protection deferred to each chunk's read (PreCopySender): no page goes out
            // twice for a write landing between this scan and its chunk's read.
            let scan = try tracker.scan(attachNew: true, deferProtection: true)
            // Counted once: DirtyScan sums its ranges on every read, and at stride 4 a
            // round has one range per page (reading it per chunk made rounds quadratic).
            let dirtyPages = scan.dirtyPages
            let rate = lastScan.map { Double(dirtyPages) / max(1e-9, Double(scannedAt - $0) / 1e9) }
            let pause = policy.predictedPause(dirtyPages: dirtyPages).map { $0 * 1000 }
            let thisRound = round
            let maxRounds = policy.settings.maxRounds
            if let report = roundProgress {
                sender.onChunk = { pages, bytes in
                    report(RoundProgress(round: thisRound, maxRounds: maxRounds, pagesSent: pages, dirtyPages: dirtyPages,
                                         dirtyPagesPerSecond: rate, predictedPauseMillis: pause), bytes)
                }
                report(RoundProgress(round: thisRound, maxRounds: maxRounds, pagesSent: 0, dirtyPages: dirtyPages,
                                     dirtyPagesPerSecond: rate, predictedPauseMillis: pause), 0)
            }
            var stats = try sender.sendRound(scan, round: round, tracker: tracker)
            sender.onChunk = nil
            stats.intervalNanos = lastScan.map { scannedAt - $0 } ?? 0
            lastScan = scannedAt
            for line in stats.fallbacks { progress?(line) }
            let decision = policy.decide(after: RoundObservation(
                round: round, dirtyPages: stats.dirtyPages, residentPages: stats.residentPages,
                bytesSent: stats.bytesSent, seconds: Double(stats.copyNanos) / 1e9))
            var line = decision.reason + String(format: " [sent %d data + %d zero pages, %@ in %.0f ms",
                                                stats.dataPages, stats.zeroPages,
                                                ByteSizeText.format(stats.bytesSent), Double(stats.copyNanos) / 1e6)
            if let rate = stats.dirtyPagesPerSecond {
                line += String(format: "; dirty rate %.0f pages/s (%@/s)", rate, ByteSizeText.format(UInt64(rate) * systemPageSize))
            }
            if let pause = policy.predictedPause(dirtyPages: stats.dirtyPages) {
                line += String(format: "; predicted pause %.0f ms", pause * 1000)
            }
            line += "]"
            stats.predictedPauseSeconds = policy.predictedPause(dirtyPages: stats.dirtyPages)
            stats.decision = decision.reason
            report.decisions.append(line)
            progress?(line)
            switch decision {
            case .finalPhase(let reason):
                report.rounds.append(stats)
                report.finalReason = reason
                return report
            case .anotherRound(_, let throttlePercent):
                if let percent = throttlePercent, let throttle {
                    try throttle.apply(percent: percent)
                    report.lowestThrottle = min(report.lowestThrottle ?? 100, percent)
                    stats.throttlePercent = percent
                }
                report.rounds.append(stats)
            }
        }
    }
}

extension ContainerDirtyTracker {
    /// The tracker kind for a container on this host: what `godwit check` found
    /// (HostReport.dirtyTracker, from StrategyPlanner.dirtyTracker), unless forced
    /// (tests, or a user who distrusts a tracker). Hashing is the last resort: it only
    /// needs process_vm_readv. Per-process fallback to hashing happens at attach time.
    public static func kind(hostChoice: DirtyTrackerKind?, forced: DirtyTrackerKind? = nil) -> DirtyTrackerKind {
        forced ?? hostChoice ?? .hashing
    }
}

enum ByteSizeText {
    static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB"]
        var value = Double(bytes), unit = 0
        while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

/// An in-memory byte stream (ByteSink + ByteSource), for carrying a round within one
/// process through the same framing a network transport would use.
public final class MemoryByteStream: ByteSink, ByteSource {
    public private(set) var bytes: [UInt8] = []
    private var position = 0
    public init() {}

    public func write(_ buffer: UnsafeRawBufferPointer) throws { bytes.append(contentsOf: buffer) }

    public func readFull(_ buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        if position == bytes.count, buffer.count > 0 { return false }
        guard position + buffer.count <= bytes.count else {
            throw GodwitError("in-memory page stream ended inside a record")
        }
        bytes.withUnsafeBytes { src in
            buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: src[position..<(position + buffer.count)]))
        }
        position += buffer.count
        return true
    }
}
