import API
import Foundation
import GodwitCore
import Synchronization

/// Where a move stands, as the engine reports it while it runs: the phase, bytes done and
/// expected (when known), the rate and time left, and during pre-copy the round.
public struct MoveProgress: Sendable, Equatable {
    public var phase: String
    public var bytesDone: UInt64?
    public var bytesExpected: UInt64?
    public var bytesPerSecond: Double?
    public var etaSeconds: Double?
    public var round: RoundProgress?
    /// A free-form remark (a decision, a fallback), shown after the figures.
    public var note: String?

    public init(phase: String, bytesDone: UInt64? = nil, bytesExpected: UInt64? = nil, note: String? = nil) {
        self.phase = phase; self.bytesDone = bytesDone; self.bytesExpected = bytesExpected; self.note = note
    }

    /// The phase in words, without the byte figures: "pre-copy round 2/10: 812 of 4096
    /// dirty pages sent; dirty rate 1200 pages/s; predicted pause 140 ms".
    public var headline: String { compose(figures: nil) }

    /// The headline with the figures: "pre-copy round 2/10: 812 of 4096 dirty pages sent
    /// (3.2 MiB of 16.0 MiB at 95.1 MiB/s, 0.1 s left); dirty rate 1200 pages/s; ...".
    public var text: String { compose(figures: figures) }

    /// "3.2 MiB of 16.0 MiB at 95.1 MiB/s, 0.1 s left", when bytes are counted.
    public var figures: String? {
        guard let done = bytesDone else { return nil }
        var f = ByteSize.format(done)
        if let expected = bytesExpected, expected > 0 { f += " of " + ByteSize.format(expected) }
        if let rate = bytesPerSecond, rate > 0 { f += " at " + ByteSize.format(UInt64(rate)) + "/s" }
        if let eta = etaSeconds { f += String(format: ", %.1f s left", eta) }
        return f
    }

    private func compose(figures: String?) -> String {
        var line = phase
        var tail: [String] = []
        if let r = round {
            line += " round \(r.round)" + (r.maxRounds.map { "/\($0)" } ?? "") + ": \(r.pagesSent) of \(r.dirtyPages) dirty pages sent"
            if let figures { line += " (\(figures))" }
            if let rate = r.dirtyPagesPerSecond { tail.append(String(format: "dirty rate %.0f pages/s", rate)) }
            if let pause = r.predictedPauseMillis { tail.append(String(format: "predicted pause %.0f ms", pause)) }
        } else if let figures {
            line += ": " + figures
        }
        if let note { tail.append(note) }
        guard !tail.isEmpty else { return line }
        return line + (line == phase ? ": " : "; ") + tail.joined(separator: "; ")
    }
}

/// A pre-copy round in progress.
public struct RoundProgress: Sendable, Equatable {
    public var round: Int
    public var maxRounds: Int?
    /// Pages of this round's dirty set sent so far, and the set's size.
    public var pagesSent: Int
    public var dirtyPages: Int
    /// Measured since the previous round's scan (nil in round 1).
    public var dirtyPagesPerSecond: Double?
    /// The pause the previous round's dirty set predicted at the measured bandwidth.
    public var predictedPauseMillis: Double?

    public init(round: Int, maxRounds: Int?, pagesSent: Int, dirtyPages: Int,
                dirtyPagesPerSecond: Double? = nil, predictedPauseMillis: Double? = nil) {
        self.round = round; self.maxRounds = maxRounds; self.pagesSent = pagesSent; self.dirtyPages = dirtyPages
        self.dirtyPagesPerSecond = dirtyPagesPerSecond; self.predictedPauseMillis = predictedPauseMillis
    }
}

/// Turns "this many bytes of this phase are done" into MoveProgress with a rate and an ETA,
/// and hands it to the sink at most every `interval` (plus every phase change).
///
/// Concurrency model: any thread may call `begin`/`advance`/`note` (the pre-copy loop and
/// channel threads run off the cooperative pool); the phase state lives in one Mutex and
/// the sink is called outside it.
public final class ProgressReporter: Sendable {
    private struct Phase {
        var progress: MoveProgress
        /// Where the rate is measured from: the phase's start, or the current round's.
        var startedAt: UInt64
        var lastEmit: UInt64 = 0
        var noteAt: UInt64 = 0
    }

    /// How long a note stays on the line after it was said.
    private static let noteSeconds = 1.5

    private let sink: @Sendable (MoveProgress) -> Void
    private let interval: UInt64
    private let state = Mutex<Phase?>(nil)

    public init(interval: Duration = .milliseconds(250), sink: @escaping @Sendable (MoveProgress) -> Void) {
        self.sink = sink
        let (s, atto) = interval.components
        self.interval = UInt64(max(0, s)) * 1_000_000_000 + UInt64(max(0, atto / 1_000_000_000))
    }

    public static let silent = ProgressReporter { _ in }

    private static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    /// A new phase; `expected` bytes if known.
    public func begin(_ phase: String, expected: UInt64? = nil, note: String? = nil) {
        let p = MoveProgress(phase: phase, bytesDone: expected == nil ? nil : 0, bytesExpected: expected, note: note)
        let now = Self.now()
        state.withLock { $0 = Phase(progress: p, startedAt: now, lastEmit: now, noteAt: now) }
        sink(p)
    }

    /// `done` bytes of the current phase are done (and, in a round, `round`).
    public func advance(_ done: UInt64, expected: UInt64? = nil, round: RoundProgress? = nil, force: Bool = false) {
        let emit: MoveProgress? = state.withLock { phase in
            guard var p = phase else { return nil }
            let now = Self.now()
            // Each round sends its own dirty set: its rate is measured from its own start.
            if let round, round.round != p.progress.round?.round {
                p.startedAt = now
                p.progress.bytesPerSecond = nil
                p.progress.etaSeconds = nil
            }
            p.progress.bytesDone = done
            if let expected { p.progress.bytesExpected = expected }
            if let round { p.progress.round = round }
            if p.progress.note != nil, Double(now - p.noteAt) / 1e9 > Self.noteSeconds { p.progress.note = nil }
            let seconds = Double(now - p.startedAt) / 1e9
            if seconds > 0.05, done > 0 {
                let rate = Double(done) / seconds
                p.progress.bytesPerSecond = rate
                if let total = p.progress.bytesExpected, total > done { p.progress.etaSeconds = Double(total - done) / rate }
                else { p.progress.etaSeconds = nil }
            }
            defer { phase = p }
            guard force || now - p.lastEmit >= interval else { return nil }
            p.lastEmit = now
            return p.progress
        }
        if let emit { sink(emit) }
    }

    /// A remark on the current phase (always shown).
    public func note(_ text: String) {
        let emit: MoveProgress = state.withLock { phase in
            var p = phase ?? Phase(progress: MoveProgress(phase: "move"), startedAt: Self.now())
            p.progress.note = text
            p.lastEmit = Self.now()
            p.noteAt = p.lastEmit
            phase = p
            return p.progress
        }
        sink(emit)
    }
}
