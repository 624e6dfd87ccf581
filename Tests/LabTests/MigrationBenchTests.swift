import Foundation
import GodwitCore
import Testing
@testable import Lab

/// `bench migrate`'s statistics, arguments and writers, on recorded figures (no lab, no timing).
@Suite struct MigrationBenchStatisticsTests {
    @Test func medianOfOddAndEvenCounts() throws {
        let odd = try #require(BenchStat([30, 10, 20]))
        #expect(odd.median == 20 && odd.min == 10 && odd.max == 30 && odd.count == 3)
        let even = try #require(BenchStat([4, 1, 3, 2]))
        #expect(even.median == 2.5 && even.min == 1 && even.max == 4 && even.count == 4)
        let one = try #require(BenchStat([7]))
        #expect(one.median == 7 && one.min == 7 && one.max == 7)
    }

    @Test func emptyAndNonFiniteValuesGiveNoStatistic() {
        #expect(BenchStat([]) == nil)
        #expect(BenchStat([.nan, .infinity]) == nil)
        #expect(BenchStat([.nan, 5])?.median == 5)
    }

    @Test func ratioNeedsAPositiveBaseline() {
        #expect(BenchStatistics.ratio(50, to: 200) == 0.25)
        #expect(BenchStatistics.ratio(50, to: 0) == nil)
        #expect(BenchStatistics.ratio(nil, to: 10) == nil)
        #expect(BenchStatistics.ratio(10, to: nil) == nil)
    }

    static func sample(_ strategy: BenchStrategy, stride: Int = 4, size: Int = 256, repetition: Int = 1,
                       app: Double, total: Double, net: Double? = nil, verification: String = "pass",
                       outcome: BenchSample.Outcome = .moved) -> BenchSample {
        var s = BenchSample(configuration: BenchConfiguration(strategy: strategy, stride: stride, sizeMiB: size),
                            repetition: repetition, outcome: outcome,
                            phases: [BenchPhase(name: "memory", millis: total, bytes: 256 << 20)])
        s.appDowntimeMillis = app
        s.totalMillis = total
        s.networkDowntimeMillis = net ?? app
        s.verification = verification
        return s
    }

    @Test func summariesTakeMediansOverRepetitionsAndRatiosToTheirBaseline() throws {
        let samples = [
            Self.sample(.criuPageServer, repetition: 1, app: 3000, total: 3100),
            Self.sample(.criuPageServer, repetition: 2, app: 2000, total: 2100),
            Self.sample(.criuPageServer, repetition: 3, app: 2500, total: 2600),
            Self.sample(.stopAndCopy, repetition: 1, app: 1000, total: 1300),
            Self.sample(.stopAndCopy, repetition: 2, app: 1250, total: 1400),
            Self.sample(.stopAndCopy, repetition: 3, app: 1500, total: 1500, verification: "fail"),
            Self.sample(.criuLazy, app: 400, total: 3000),
            Self.sample(.postCopy, app: 100, total: 2000),
            Self.sample(.preCopy, app: 0, total: 0, outcome: .skipped),
        ]
        let summaries = BenchSummary.summarize(samples)
        let stop = try #require(summaries.first { $0.configuration.strategy == .stopAndCopy })
        #expect(stop.stat(.appDowntime) == BenchStat(median: 1250, min: 1000, max: 1500, count: 3))
        #expect(stop.ratios[.appDowntime] == 0.5)  // 1250 / 2500
        #expect(stop.ratios[.total] == 1400.0 / 2600.0)
        #expect(stop.verification == "1 fail / 3")
        let post = try #require(summaries.first { $0.configuration.strategy == .postCopy })
        #expect(post.ratios[.appDowntime] == 0.25)
        #expect(post.ratios[.total] == 2000.0 / 3000.0)
        #expect(post.verification == "pass")
        let baseline = try #require(summaries.first { $0.configuration.strategy == .criuPageServer })
        #expect(baseline.ratios.isEmpty)
        let skipped = try #require(summaries.first { $0.configuration.strategy == .preCopy })
        #expect(skipped.moved == 0 && skipped.stats.isEmpty && skipped.verification == "-")
        // Talk order: stride, then Godwit's modes before the baselines.
        #expect(summaries.map(\.configuration.strategy) == [.stopAndCopy, .preCopy, .postCopy, .criuPageServer, .criuLazy])
    }

    @Test func noRatioWithoutABaselineOfTheSameStrideAndSize() throws {
        let summaries = BenchSummary.summarize([
            Self.sample(.criuPageServer, stride: 0, app: 1000, total: 1000),
            Self.sample(.stopAndCopy, stride: 4, app: 500, total: 500),
        ])
        let stop = try #require(summaries.first { $0.configuration.strategy == .stopAndCopy })
        #expect(stop.ratios.isEmpty)
    }

    @Test func eachGodwitModeHasItsBaseline() {
        #expect(BenchStrategy.stopAndCopy.baseline == .criuPageServer)
        #expect(BenchStrategy.preCopy.baseline == .criuPageServer)
        #expect(BenchStrategy.postCopy.baseline == .criuLazy)
        #expect(BenchStrategy.hybrid.baseline == .criuLazy)
        #expect(BenchStrategy.baselines.allSatisfy { $0.baseline == nil })
    }
}

@Suite struct MigrationBenchArgumentTests {
    @Test func stridesKeepOrderAndDropDuplicates() throws {
        #expect(try BenchArguments.strides("1,2,4,0") == [1, 2, 4, 0])
        #expect(try BenchArguments.strides(" 4, 0 ,4") == [4, 0])
    }

    @Test(arguments: ["3", "8", "-1", "one", "1,,2", "", "1,"])
    func badStrideSaysWhichAreAllowed(text: String) {
        let error = #expect(throws: GodwitError.self) { try BenchArguments.strides(text) }
        #expect(error?.message.isEmpty == false)
        #expect(error?.hint?.contains("1,2,4,0") == true)
    }

    @Test func sizesInMiBOrWithUnits() throws {
        #expect(try BenchArguments.sizes("256,1024") == [256, 1024])
        #expect(try BenchArguments.sizes("1GiB,512MiB,1g") == [1024, 512])
    }

    @Test(arguments: ["0", "-5", "huge", "100000", "64GiB1", "65GiB"])
    func badSizeIsRejected(text: String) {
        let error = #expect(throws: GodwitError.self) { try BenchArguments.sizes(text) }
        #expect(error?.message.contains("invalid size") == true)
        #expect(error?.hint?.contains("MiB") == true)
    }

    @Test func modesByNameAndGroup() throws {
        #expect(try BenchArguments.strategies("post-copy,stop-and-copy") == [.stopAndCopy, .postCopy])
        #expect(try BenchArguments.strategies("all") == BenchStrategy.allCases)
        #expect(try BenchArguments.strategies("godwit") == BenchStrategy.godwitModes)
        #expect(try BenchArguments.strategies("baselines,hybrid") == [.hybrid, .criuPageServer, .criuLazy])
    }

    @Test func unknownModeListsTheValidOnes() {
        let error = #expect(throws: GodwitError.self) { try BenchArguments.strategies("stop-and-copy,warp") }
        #expect(error?.message == "unknown mode 'warp'")
        #expect(error?.hint?.contains("criu-lazy") == true)
        let auto = #expect(throws: GodwitError.self) { try BenchArguments.strategies("auto") }
        #expect(auto?.hint?.contains("auto picks") == true)
    }

    @Test func repetitionsMustBePositive() throws {
        #expect(try BenchArguments.repetitions(3) == 3)
        #expect(throws: GodwitError.self) { try BenchArguments.repetitions(0) }
    }

    @Test func profiles() {
        #expect(BenchPlan.quick.sizesMiB == [256] && BenchPlan.quick.repetitions == 1 && BenchPlan.quick.strides == [4, 0])
        #expect(BenchPlan.full.sizesMiB == [1024] && BenchPlan.full.repetitions == 3 && BenchPlan.full.strides == [1, 2, 4, 0])
        #expect(BenchPlan.full.runCount == 6 * 4 * 3)
        // Baselines of a stride run before the modes compared with them.
        #expect(BenchPlan.quick.configurations.prefix(2).map(\.strategy) == [.criuPageServer, .criuLazy])
    }
}

@Suite struct MigrationBenchReportTests {
    @Test func moveReportDecodesTodaysAndTomorrowsFields() throws {
        let today = #"{"container":"c","mode":"stop-and-copy","outcome":"moved","totalMillis":2500.5,"frozenMillis":2400,"#
            + #""phases":[{"name":"memory","millis":2000,"bytes":268435456},{"name":"restore","millis":100,"bytes":0}]}"#
        let figures = try BenchMoveFigures(json: Data(today.utf8))
        #expect(figures.outcome == "moved" && figures.totalMillis == 2500.5 && figures.frozenMillis == 2400)
        #expect(figures.allLocalMillis == nil && figures.rounds == nil)
        #expect(figures.phases == [BenchPhase(name: "memory", millis: 2000, bytes: 268_435_456), BenchPhase(name: "restore", millis: 100, bytes: 0)])
        let withRounds = #"{"outcome":"moved","rounds":[{"round":1,"dirtyPages":65536,"dataPages":65530},{"round":2,"dirtyPages":1200},"#
            + #"{"round":3,"dirtyPages":80}],"allLocalMillis":900,"memory":{"tracker":"uffd-wp"}}"#
        let later = try BenchMoveFigures(json: Data(withRounds.utf8))
        #expect(later.rounds == 3 && later.pagesPerRound == [65536, 1200, 80] && later.allLocalMillis == 900)
        #expect(try BenchMoveFigures(json: Data(#"{"outcome":"moved","rounds":4}"#.utf8)).rounds == 4)
        #expect(throws: GodwitError.self) { try BenchMoveFigures(json: Data("error: no".utf8)) }
    }

    @Test func memtouchReport() throws {
        let json = #"{"program":"memtouch","pid":12,"phase":"running","ready":true,"iterations":5000,"missed_sleeps":3,"#
            + #""longest_gap_us":412345,"longest_gap_at_us":1795785161234567,"verification":{"verdict":"pass","runs":1,"bad_pages":0}}"#
        let report = try MemtouchReport.decode(Data(json.utf8))
        #expect(report.ready && report.longestGapMicros == 412_345 && report.verification.verdict == "pass" && report.verification.runs == 1)
    }
}

@Suite struct MigrationBenchOutputTests {
    static let summaries = BenchSummary.summarize([
        MigrationBenchStatisticsTests.sample(.criuPageServer, repetition: 1, app: 2000, total: 2100),
        MigrationBenchStatisticsTests.sample(.criuPageServer, repetition: 2, app: 3000, total: 3100),
        MigrationBenchStatisticsTests.sample(.stopAndCopy, repetition: 1, app: 1000, total: 1200),
        MigrationBenchStatisticsTests.sample(.stopAndCopy, repetition: 2, app: 1000, total: 1200),
    ])

    @Test func figuresAndCells() {
        #expect(BenchOutput.figure(1234.56) == "1235")
        #expect(BenchOutput.figure(12.345) == "12.3")
        #expect(BenchOutput.figure(0.1234) == "0.12")
        #expect(BenchOutput.cell(BenchStat(median: 2500, min: 2000, max: 3000, count: 2)) == "2500 (2000–3000)")
        #expect(BenchOutput.cell(BenchStat(median: 5, min: 5, max: 5, count: 3)) == "5.00")
        #expect(BenchOutput.cell(nil) == "-")
        #expect(BenchOutput.ratio(0.4) == "×0.40")
    }

    @Test func markdownShowsPreCopyRounds() {
        var sample = MigrationBenchStatisticsTests.sample(.preCopy, app: 500, total: 900)
        sample.rounds = 3
        #expect(BenchOutput.markdown(BenchSummary.summarize([sample])).contains("| pre-copy (3 rounds) |"))
    }

    @Test func markdownTableHasOneRowPerConfigurationWithRatios() {
        let text = BenchOutput.markdown(Self.summaries)
        let lines = text.split(separator: "\n")
        #expect(lines.count == 4)  // header, separator, two rows
        #expect(lines[0].hasPrefix("| size | stride | mode |"))
        #expect(text.contains("| 256 MiB | 4 | stop-and-copy | 2 | 1000 ×0.40 |"))
        #expect(text.contains("2500 (2000–3000)"))
    }

    @Test func csvQuotesFieldsAndHasOneLinePerRow() {
        #expect(BenchOutput.csvField("plain") == "plain")
        #expect(BenchOutput.csvField("a,b") == "\"a,b\"")
        #expect(BenchOutput.csvField("say \"hi\"") == "\"say \"\"hi\"\"\"")
        let summary = BenchOutput.summaryCSV(Self.summaries).split(separator: "\n")
        #expect(summary.count == 3)
        let header = summary[0].split(separator: ",").map(String.init)
        let row = summary[1].split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        #expect(header.count == row.count)
        #expect(row[header.firstIndex(of: "mode")!] == "stop-and-copy")
        #expect(row[header.firstIndex(of: "app_downtime_ms_median")!] == "1000.000")
        #expect(row[header.firstIndex(of: "app_downtime_ms_ratio")!] == "0.400")
        #expect(row[header.firstIndex(of: "baseline")!] == "criu-page-server")
        var failed = BenchSample(configuration: BenchConfiguration(strategy: .hybrid, stride: 1, sizeMiB: 64), repetition: 1,
                                 outcome: .failed, note: "move failed: x, \"y\"")
        failed.phases = []
        let runs = BenchOutput.runsCSV([failed]).split(separator: "\n")
        #expect(runs.count == 2)
        #expect(runs[1].hasSuffix("\"move failed: x, \"\"y\"\"\""))
    }

    @Test func svgIsWellFormedAndHasABarPerConfigurationAndMetric() throws {
        let svg = BenchOutput.svg(Self.summaries, title: "a < b & c")
        #expect(svg.hasPrefix("<?xml"))
        #expect(svg.contains("a &lt; b &amp; c"))
        #expect(svg.hasSuffix("</svg>\n"))
        // Every element is closed: self-closing, or paired with its end tag.
        for tag in ["text", "rect", "title"] {
            let opened = svg.components(separatedBy: "<\(tag) ").count - 1 + svg.components(separatedBy: "<\(tag)>").count - 1
            let closed = svg.components(separatedBy: "</\(tag)>").count - 1
            let selfClosed = svg.split(separator: "\n").filter { $0.hasPrefix("<\(tag) ") && $0.hasSuffix("/>") }.count
            #expect(opened == closed + selfClosed, "<\(tag)>")
        }
        let bars = svg.components(separatedBy: "</title></rect>").count - 1
        #expect(bars == 2 * 3)  // two configurations × app, net, total
        #expect(svg.contains("stride 4"))
        #expect(svg.contains("criu-page-server"))
    }

    @Test func svgMarksModesWithoutFigures() {
        var skipped = MigrationBenchStatisticsTests.sample(.preCopy, app: 0, total: 0, outcome: .skipped)
        skipped.note = "not implemented yet"
        let svg = BenchOutput.svg(BenchSummary.summarize([MigrationBenchStatisticsTests.sample(.stopAndCopy, app: 900, total: 1000), skipped]),
                                  title: "t", metrics: [.appDowntime, .networkDowntime, .total])
        #expect(svg.components(separatedBy: ">n/a</text>").count - 1 == 3)  // pre-copy in each of the three panels
        #expect(svg.contains("pre-copy"))  // still in the legend
    }

    @Test func downtimePanelsAreLogarithmicSoSubSecondBarsShow() {
        #expect(BenchOutput.logTicks(minimum: 10, maximum: 10466) == [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000])
        #expect(BenchOutput.logTicks(minimum: 10, maximum: 100) == [10, 20, 50, 100])
        let summaries = BenchSummary.summarize([MigrationBenchStatisticsTests.sample(.stopAndCopy, app: 10000, total: 11000),
                                                MigrationBenchStatisticsTests.sample(.preCopy, app: 100, total: 12000)])
        let svg = BenchOutput.svg(summaries, title: "t", metrics: [.appDowntime])
        #expect(svg.contains("logarithmic"))
        // 100 ms next to 10 s: a hundredth of the other bar on a linear axis, a third here.
        let heights = svg.split(separator: "\n").filter { $0.contains("</title></rect>") }.compactMap { line -> Double? in
            guard let r = line.range(of: "height=\""), let end = line[r.upperBound...].firstIndex(of: "\"") else { return nil }
            return Double(line[r.upperBound..<end])
        }
        #expect(heights.count == 2)
        if heights.count == 2 { #expect(heights.min()! / heights.max()! > 0.3) }
    }

    @Test func ticksCoverTheMaximum() {
        #expect(BenchOutput.ticks(maximum: 9.3) == [0, 2, 4, 6, 8, 10])
        #expect(BenchOutput.ticks(maximum: 2600).last! >= 2600)
        #expect(BenchOutput.ticks(maximum: 0) == [0, 1])
    }
}

/// The frozen window's breakdown: only Godwit's moves, only the phases between the freeze
/// and the commit, medians per phase, and the unaccounted rest.
struct FrozenBreakdownTests {
    static func run(_ strategy: MigrationStrategy, frozen: Double, checkpoint: Double, restore: Double) -> BenchSample {
        var s = BenchSample(configuration: BenchConfiguration(strategy: .move(strategy), stride: 4, sizeMiB: 256), repetition: 1,
                            outcome: .moved,
                            phases: [BenchPhase(name: "pre-copy", millis: 5000, bytes: 1),
                                     BenchPhase(name: "checkpoint", millis: checkpoint, bytes: 0),
                                     BenchPhase(name: "memory + restore", millis: restore, bytes: 0),
                                     BenchPhase(name: "destination: criu restore", millis: restore / 2, bytes: 0),
                                     BenchPhase(name: "commit", millis: 10, bytes: 0)])
        s.frozenMillis = frozen
        return s
    }

    @Test func mediansOfTheWindowsPhasesAndTheRest() {
        let samples = [Self.run(.preCopy, frozen: 400, checkpoint: 100, restore: 200),
                       Self.run(.preCopy, frozen: 500, checkpoint: 300, restore: 100),
                       Self.run(.preCopy, frozen: 450, checkpoint: 200, restore: 150)]
        let rows = FrozenBreakdown.rows(samples)
        #expect(rows.count == 1)
        #expect(rows.first?.phases["checkpoint"] == 200)
        #expect(rows.first?.phases["memory + restore"] == 150)
        #expect(rows.first?.phases["pre-copy"] == nil)
        #expect(rows.first?.frozen == 450)
        #expect(rows.first?.other == 90)  // 400-310, 500-410, 450-360
        let table = FrozenBreakdown.markdown(samples)
        #expect(table.contains("↳ criu restore"))
        #expect(table.split(separator: "\n").first.map { !$0.contains("pre-copy") } == true)
        #expect(FrozenBreakdown.csv(samples).split(separator: "\n").count == 2)
    }

    @Test func baselinesAndFailedRunsAreLeftOut() {
        var failed = Self.run(.hybrid, frozen: 1, checkpoint: 1, restore: 1)
        failed.outcome = .failed
        let baseline = BenchSample(configuration: BenchConfiguration(strategy: .criuLazy, stride: 4, sizeMiB: 256), repetition: 1,
                                   outcome: .moved, phases: [BenchPhase(name: "checkpoint", millis: 1, bytes: 0)])
        #expect(FrozenBreakdown.rows([failed, baseline]).isEmpty)
        #expect(FrozenBreakdown.markdown([failed, baseline]).isEmpty)
    }
}
