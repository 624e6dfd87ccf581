import Foundation
import GodwitCore
import Lab
import Testing

/// `godwit bench track` on a real memtouch: the uffd-wp tracker must see the talk
/// workload's writes (about one page per iteration) and leave its memory intact.
@Suite struct TrackingBenchTests {
    @Test func uffdTrackerSeesTheWritesAndCostsNoCorruption() throws {
        let plan = TrackingBenchPlan(sizeMiB: 32, workloads: [.talk], trackers: [.uffdWP], pairs: 1,
                                     windowSeconds: 1, scanInterval: 0.25, memtouch: try MemtouchBinary.path())
        let results = try TrackingBench(plan: plan).run()
        let result = try #require(results.first)
        #expect(result.error == nil)
        #expect(result.used == "uffd-wp")
        #expect(result.verification == "pass")
        #expect(result.ratios.count == 1)
        #expect(result.untrackedRates.allSatisfy { $0 > 100 }, "memtouch loops at thousands per second: \(result.untrackedRates)")
        // Each iteration writes the next page of an 8192-page region, so a scan reports
        // about iterations-per-interval pages: not nothing, not the whole region every time.
        let dirty = try #require(BenchStat(result.dirtyPagesPerScan))
        #expect(result.scans >= 2)
        #expect(dirty.median > 10)
        #expect(dirty.median < 8192)
    }

    @Test func noSleepMeansNoSleep() throws {
        let plan = TrackingBenchPlan(sizeMiB: 16, workloads: [.talk, .busy], trackers: [.hashing], pairs: 1,
                                     windowSeconds: 0.5, scanInterval: 0.25, memtouch: try MemtouchBinary.path())
        let results = try TrackingBench(plan: plan).run()
        #expect(results.count == 2)
        let talk = try #require(BenchStat(results[0].untrackedRates)).median
        let busy = try #require(BenchStat(results[1].untrackedRates)).median
        // 100 µs sleeps cap the talk loop near 10k/s; without them it writes millions of pages.
        #expect(busy > talk * 20, "busy \(busy)/s vs talk \(talk)/s")
    }
}
