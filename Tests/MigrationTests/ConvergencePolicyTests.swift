import API
import Foundation
@testable import Migration
import Testing

/// The stop rules, fed with made-up rounds.
@Suite struct ConvergencePolicyTests {
    /// Runs the policy over dirty counts (resident 10,000 pages, 1 MB/s per round of 4 KiB
    /// pages unless given) and returns the decisions.
    func run(_ settings: ConvergenceSettings, dirty: [Int], resident: Int = 10_000,
             bytesPerSecond: Double = 100e6) -> [ConvergenceDecision] {
        var policy = ConvergencePolicy(settings: settings)
        var out: [ConvergenceDecision] = []
        for (i, d) in dirty.enumerated() {
            let bytes = UInt64(d) * 4096
            let decision = policy.decide(after: RoundObservation(round: i + 1, dirtyPages: d, residentPages: resident,
                                                                bytesSent: bytes, seconds: Double(bytes) / bytesPerSecond))
            out.append(decision)
            if decision.isFinal { break }
        }
        return out
    }

    @Test func offMeansNoRounds() throws {
        let policy = ConvergencePolicy(settings: ConvergenceSettings(config: ContainerConfig()))
        #expect(policy.shouldStart.0 == false, "migration.incremental.memory defaults to off")
        let on = ConvergencePolicy(settings: ConvergenceSettings(config: ContainerConfig(["migration.incremental.memory": "true"])))
        #expect(on.shouldStart.0)
        #expect(on.settings.goalPercent == 70 && on.settings.maxRounds == 10 && on.settings.downtimeTarget == 0.3 && on.settings.autoConverge)
    }

    @Test func oneIterationIsExactlyOneRound() {
        let d = run(ConvergenceSettings(maxRounds: 1), dirty: [10_000, 5_000])
        #expect(d.count == 1 && d[0].isFinal)
        #expect(d[0].reason.contains("iterations=1"))
    }

    @Test func goalStopsWhenEnoughIsUnchanged() {
        // Slow link so the downtime rule doesn't fire first.
        let d = run(ConvergenceSettings(goalPercent: 70, downtimeTarget: 0.001), dirty: [10_000, 5_000, 2_900, 100],
                    bytesPerSecond: 1e6)
        #expect(d.count == 3, "\(d.map(\.reason))")
        #expect(d[2].reason.contains("71.0 % unchanged ≥ goal 70 %"), "\(d[2].reason)")
        #expect(d[2].reason.hasPrefix("round 3: 2,900 pages dirty (11.3 MiB)"))
    }

    @Test func goalMetButThePauseIsLongAndRoundsStillHalveTheDirtySet() {
        // memtouch at stride 4 over 1 GiB: round 2 finds 17 % dirty (83 % unchanged ≥ 70 %),
        // which would take 1.5 s frozen at 119 MB/s; the next round quarters it.
        let d = run(ConvergenceSettings(goalPercent: 70, downtimeTarget: 0.3), dirty: [262_144, 45_000, 10_000, 2_000],
                    resident: 262_144, bytesPerSecond: 119e6)
        #expect(d.count == 4, "\(d.map(\.reason))")
        #expect(!d[1].isFinal && d[1].reason.contains("halves"), "\(d[1].reason)")
        #expect(!d[2].isFinal, "\(d[2].reason)")  // 10,000 pages: 344 ms > 300 ms
        #expect(d[3].isFinal && d[3].reason.contains("≥ goal 70 %"), "\(d[3].reason)")
        // A dirty set that shrinks less than by half: the goal stops it (LXD's rule).
        let slow = run(ConvergenceSettings(goalPercent: 70, downtimeTarget: 0.3), dirty: [262_144, 45_000, 30_000],
                       resident: 262_144, bytesPerSecond: 119e6)
        #expect(slow.count == 3 && slow[2].isFinal, "\(slow.map(\.reason))")
    }

    @Test func goal100RunsUntilNothingIsDirtyOrTheLimit() {
        let clean = run(ConvergenceSettings(goalPercent: 100, maxRounds: 10), dirty: [10_000, 30, 5, 0, 7])
        #expect(clean.count == 4 && clean[3].isFinal && clean[3].reason.contains("nothing left dirty"))
        // Neither the downtime rule nor stall detection stops it early.
        let busy = run(ConvergenceSettings(goalPercent: 100, maxRounds: 6), dirty: [10_000, 50, 50, 50, 50, 50, 50])
        #expect(busy.count == 6 && busy[5].reason.contains("iterations=6"))
    }

    @Test func downtimeRuleUsesMeasuredBandwidth() {
        // 100 MB/s: 5,000 pages = 205 ms < 300 ms.
        let d = run(ConvergenceSettings(goalPercent: 95), dirty: [10_000, 5_000])
        #expect(d.count == 2 && d[1].isFinal && d[1].reason.contains("predicted pause 205 ms ≤ downtime 300 ms"), "\(d[1].reason)")
        // 10 MB/s: 2 s predicted, keeps going.
        let slow = run(ConvergenceSettings(goalPercent: 95), dirty: [10_000, 5_000], bytesPerSecond: 10e6)
        #expect(!slow[1].isFinal)
    }

    @Test func stallsThrottleThenGiveUp() {
        var settings = ConvergenceSettings(goalPercent: 95, maxRounds: 30, downtimeTarget: 0.001)
        let flat = [10_000] + Array(repeating: 4_000, count: 29)
        let d = run(settings, dirty: flat, bytesPerSecond: 1e6)
        let throttles = d.compactMap { if case .anotherRound(_, let t) = $0 { return t } else { return nil } }
        #expect(throttles == [80, 60, 40, 20], "\(d.map(\.reason))")
        #expect(d.last?.isFinal == true && d.last?.reason.contains("lowest CPU throttle") == true)
        #expect(d.count == 1 + 3 * 5 + 1, "3 stalled rounds before each of 4 steps, then 3 more")

        settings.autoConverge = false
        let plain = run(settings, dirty: flat, bytesPerSecond: 1e6)
        #expect(plain.count == 5 && plain.last?.reason.contains("autoconverge off") == true, "\(plain.map(\.reason))")
    }

    @Test func shrinkingRoundsAreNotStalls() {
        let d = run(ConvergenceSettings(goalPercent: 99, maxRounds: 8, downtimeTarget: 0.000_001),
                    dirty: [10_000, 8_000, 7_000, 6_000, 5_000, 4_000, 3_000, 2_000], bytesPerSecond: 1e6)
        #expect(d.count == 8 && d.allSatisfy { if case .anotherRound(_, let t) = $0 { return t == nil } else { return true } })
    }

    @Test func throttleQuota() {
        #expect(CPUThrottle.quota(percent: 60, originalQuota: 50_000, period: 100_000, cpus: 2) == 30_000)
        #expect(CPUThrottle.quota(percent: 80, originalQuota: nil, period: 100_000, cpus: 2) == 160_000)
        #expect(CPUThrottle.quota(percent: 1, originalQuota: 10_000, period: 100_000, cpus: 1) == 1000, "never below 1 ms")
    }
}
