import Foundation
import GodwitCore

// `godwit bench migrate`: the FOSDEM 2018 talk's experiment (memtouch moved between two hosts
// at a given bandwidth, per mode and stride) with CRIU's own baselines measured in the same
// run. This file is the part without side effects: what to run, what one run measured, and
// the statistics over repetitions. The CLI (Sources/godwit/BenchMigrate*.swift) drives the lab.

/// One way of moving the container in the benchmark: a Godwit move with one of the
/// strategies (`godwit move --mode`), or a plain-CRIU baseline. Written as the strategy's
/// own name ("pre-copy") or the baseline's ("criu-lazy") in CSVs and tables.
public enum BenchStrategy: Hashable, Codable, Sendable, Comparable, CaseIterable, RawRepresentable {
    case move(MigrationStrategy)
    /// `criu page-server` on the destination + `criu dump --page-server`, then `criu restore`.
    case criuPageServer
    /// `criu dump --lazy-pages`, `criu lazy-pages` + `criu restore --lazy-pages`.
    case criuLazy

    public static let stopAndCopy = BenchStrategy.move(.stopAndCopy)
    public static let preCopy = BenchStrategy.move(.preCopy)
    public static let postCopy = BenchStrategy.move(.postCopy)
    public static let hybrid = BenchStrategy.move(.hybrid)

    public static let godwitModes: [BenchStrategy] = MigrationStrategy.allCases.map { .move($0) }
    public static let baselines: [BenchStrategy] = [.criuPageServer, .criuLazy]
    public static let allCases: [BenchStrategy] = godwitModes + baselines

    public init?(rawValue: String) {
        switch rawValue {
        case "criu-page-server": self = .criuPageServer
        case "criu-lazy": self = .criuLazy
        default:
            guard let strategy = MigrationStrategy(rawValue: rawValue) else { return nil }
            self = .move(strategy)
        }
    }

    public var rawValue: String {
        switch self {
        case .move(let strategy): strategy.rawValue
        case .criuPageServer: "criu-page-server"
        case .criuLazy: "criu-lazy"
        }
    }

    public init(from decoder: Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = BenchStrategy(rawValue: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "unknown strategy '\(text)'"))
        }
        self = value
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(rawValue)
    }

    public var isBaseline: Bool { Self.baselines.contains(self) }

    /// What a Godwit figure is divided by: the CRIU run that does the same job without
    /// Godwit's logic. Pre-copy has no CRIU counterpart on hosts without soft-dirty, so it
    /// is compared with plain stop-and-copy (what CRIU users get instead); hybrid with lazy.
    public var baseline: BenchStrategy? {
        switch self {
        case .move(let strategy): strategy.restoresLazily ? .criuLazy : .criuPageServer
        case .criuPageServer, .criuLazy: nil
        }
    }

    /// Post-copy-like strategies: memory arrives after the container runs again.
    public var isLazy: Bool {
        switch self {
        case .move(let strategy): strategy.restoresLazily
        case .criuLazy: true
        case .criuPageServer: false
        }
    }

    public static func < (a: BenchStrategy, b: BenchStrategy) -> Bool {
        allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)!
    }
}

/// One cell of the matrix.
public struct BenchConfiguration: Hashable, Codable, Sendable, Comparable {
    public var strategy: BenchStrategy
    public var stride: Int
    public var sizeMiB: Int

    public init(strategy: BenchStrategy, stride: Int, sizeMiB: Int) {
        self.strategy = strategy; self.stride = stride; self.sizeMiB = sizeMiB
    }

    /// Sizes, then strides in the talk's order (1, 2, 4, 0: most to least dirtying), then strategies.
    public static func < (a: BenchConfiguration, b: BenchConfiguration) -> Bool {
        let order = { (s: Int) in BenchArguments.allStrides.firstIndex(of: s) ?? s }
        return (a.sizeMiB, order(a.stride), a.strategy) < (b.sizeMiB, order(b.stride), b.strategy)
    }
}

/// Bytes and time of one phase of a move.
public struct BenchPhase: Codable, Sendable, Equatable {
    public var name: String
    public var millis: Double
    public var bytes: UInt64
    public init(name: String, millis: Double, bytes: UInt64) { self.name = name; self.millis = millis; self.bytes = bytes }
}

/// What one repetition of one configuration measured. Every figure is optional: a failed or
/// skipped run keeps what it got and says why in `note`.
public struct BenchSample: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable { case moved, failed, skipped }

    public var configuration: BenchConfiguration
    public var repetition: Int
    public var outcome: Outcome
    public var note: String?
    /// memtouch's longest gap between two clock reads (CLOCK_REALTIME).
    public var appDowntimeMillis: Double?
    /// The client's longest time without an answer from the container's responder.
    public var networkDowntimeMillis: Double?
    /// True when the responder had not answered again when the probe stopped.
    public var networkUnanswered: Bool?
    public var totalMillis: Double?
    public var frozenMillis: Double?
    /// Post-copy: from the freeze until every page was on the destination.
    public var allLocalMillis: Double?
    public var phases: [BenchPhase]
    /// Pre-copy rounds (when the move reports them) and pages sent in each.
    public var rounds: Int?
    public var pagesPerRound: [Int]?
    /// memtouch's verification verdict after the move: pass, fail, not-run.
    public var verification: String?
    public var missedSleeps: Int?

    public init(configuration: BenchConfiguration, repetition: Int, outcome: Outcome, note: String? = nil,
                phases: [BenchPhase] = []) {
        self.configuration = configuration; self.repetition = repetition; self.outcome = outcome
        self.note = note; self.phases = phases
    }

    public var bytes: UInt64? { phases.isEmpty ? nil : phases.reduce(0) { $0 + $1.bytes } }
    public var megabytes: Double? { bytes.map { Double($0) / 1_048_576 } }
}

/// The figures the table, CSV and chart show, each with how to read it from a sample.
public enum BenchMetric: String, CaseIterable, Sendable {
    case appDowntime = "app_downtime_ms"
    case networkDowntime = "net_downtime_ms"
    case total = "total_ms"
    case frozen = "frozen_ms"
    case allLocal = "all_local_ms"
    case wire = "wire_mib"

    public var title: String {
        switch self {
        case .appDowntime: return "app downtime ms"
        case .networkDowntime: return "net downtime ms"
        case .total: return "total ms"
        case .frozen: return "frozen ms"
        case .allLocal: return "all local ms"
        case .wire: return "MiB on wire"
        }
    }

    public func value(_ sample: BenchSample) -> Double? {
        switch self {
        case .appDowntime: return sample.appDowntimeMillis
        case .networkDowntime: return sample.networkDowntimeMillis
        case .total: return sample.totalMillis
        case .frozen: return sample.frozenMillis
        case .allLocal: return sample.allLocalMillis
        case .wire: return sample.megabytes
        }
    }

    /// Ratios to the baseline are shown for these (bytes and frozen time are shown as figures only).
    public var hasRatio: Bool { [.appDowntime, .networkDowntime, .total].contains(self) }
}

/// Median with min and max over repetitions.
public struct BenchStat: Codable, Sendable, Equatable {
    public var median: Double
    public var min: Double
    public var max: Double
    public var count: Int

    public init(median: Double, min: Double, max: Double, count: Int) {
        self.median = median; self.min = min; self.max = max; self.count = count
    }

    /// nil for no values; NaN and infinities are dropped first.
    public init?(_ values: [Double]) {
        let finite = values.filter(\.isFinite).sorted()
        guard !finite.isEmpty else { return nil }
        let n = finite.count
        median = n % 2 == 1 ? finite[n / 2] : (finite[n / 2 - 1] + finite[n / 2]) / 2
        min = finite[0]
        max = finite[n - 1]
        count = n
    }
}

public enum BenchStatistics {
    /// `value / baseline`, nil when either is missing or the baseline is zero.
    public static func ratio(_ value: Double?, to baseline: Double?) -> Double? {
        guard let value, let baseline, baseline > 0, value.isFinite, baseline.isFinite else { return nil }
        return value / baseline
    }
}

/// One configuration over its repetitions.
public struct BenchSummary: Sendable, Equatable {
    public var configuration: BenchConfiguration
    public var runs: Int
    /// Runs that moved the container (the statistics are over these).
    public var moved: Int
    public var stats: [BenchMetric: BenchStat]
    /// Metric → this configuration's median divided by its baseline's median.
    public var ratios: [BenchMetric: Double]
    /// "pass" when every moved run verified, else e.g. "1 fail / 3".
    public var verification: String
    public var rounds: BenchStat?
    /// Why runs were skipped or failed (first note of each kind).
    public var notes: [String]

    public func stat(_ metric: BenchMetric) -> BenchStat? { stats[metric] }

    /// Groups samples by configuration, computes medians, then ratios to each baseline.
    public static func summarize(_ samples: [BenchSample]) -> [BenchSummary] {
        let groups = Dictionary(grouping: samples, by: \.configuration)
        var summaries: [BenchConfiguration: BenchSummary] = [:]
        for (configuration, runs) in groups {
            let moved = runs.filter { $0.outcome == .moved }
            var stats: [BenchMetric: BenchStat] = [:]
            for metric in BenchMetric.allCases {
                if let stat = BenchStat(moved.compactMap { metric.value($0) }) { stats[metric] = stat }
            }
            let verdicts = moved.map { $0.verification ?? "unknown" }
            let passes = verdicts.filter { $0 == "pass" }.count
            let verification: String
            if moved.isEmpty {
                verification = "-"
            } else if passes == moved.count {
                verification = "pass"
            } else {
                let others = Dictionary(grouping: verdicts.filter { $0 != "pass" }, by: { $0 })
                    .sorted { $0.key < $1.key }.map { "\($0.value.count) \($0.key)" }
                verification = others.joined(separator: ", ") + " / \(moved.count)"
            }
            var notes: [String] = []
            for note in runs.compactMap(\.note) where !notes.contains(note) { notes.append(note) }
            summaries[configuration] = BenchSummary(
                configuration: configuration, runs: runs.count, moved: moved.count, stats: stats, ratios: [:],
                verification: verification, rounds: BenchStat(moved.compactMap { $0.rounds.map(Double.init) }), notes: notes)
        }
        for (configuration, summary) in summaries {
            guard let base = configuration.strategy.baseline,
                  let baseline = summaries[BenchConfiguration(strategy: base, stride: configuration.stride, sizeMiB: configuration.sizeMiB)]
            else { continue }
            var ratios: [BenchMetric: Double] = [:]
            for metric in BenchMetric.allCases where metric.hasRatio {
                if let r = BenchStatistics.ratio(summary.stats[metric]?.median, to: baseline.stats[metric]?.median) {
                    ratios[metric] = r
                }
            }
            summaries[configuration]?.ratios = ratios
        }
        return summaries.values.sorted { $0.configuration < $1.configuration }
    }
}

/// The matrix to run and how: parsed and checked before anything is created.
public struct BenchPlan: Codable, Sendable, Equatable {
    public var strategies: [BenchStrategy]
    public var strides: [Int]
    public var sizesMiB: [Int]
    public var repetitions: Int
    /// tc rate syntax, e.g. 1gbit; nil: unshaped.
    public var bandwidth: String?
    public var profile: String
    /// migration.compression of the containers Godwit moves (nil: the key's default, auto).
    public var compression: String? = nil

    public init(strategies: [BenchStrategy], strides: [Int], sizesMiB: [Int], repetitions: Int, bandwidth: String?, profile: String) {
        self.strategies = strategies; self.strides = strides; self.sizesMiB = sizesMiB
        self.repetitions = repetitions; self.bandwidth = bandwidth; self.profile = profile
    }

    /// `make bench`: 256 MiB, strides 4 and 0, one repetition, every mode (those `move`
    /// doesn't implement yet are skipped with a note). Must stay under 10 minutes.
    public static let quick = BenchPlan(strategies: BenchStrategy.allCases, strides: [4, 0], sizesMiB: [256],
                                        repetitions: 1, bandwidth: "1gbit", profile: "quick")
    /// The talk's experiment: 1 GiB, strides 1, 2, 4, 0, every mode, 3 repetitions.
    public static let full = BenchPlan(strategies: BenchStrategy.allCases, strides: BenchArguments.allStrides,
                                       sizesMiB: [1024], repetitions: 3, bandwidth: "1gbit", profile: "full")

    /// Every configuration, baselines of a stride/size before the Godwit modes compared with them.
    public var configurations: [BenchConfiguration] {
        var all: [BenchConfiguration] = []
        let ordered = strategies.filter(\.isBaseline) + strategies.filter { !$0.isBaseline }
        for size in sizesMiB {
            for stride in strides {
                for strategy in ordered { all.append(BenchConfiguration(strategy: strategy, stride: stride, sizeMiB: size)) }
            }
        }
        return all
    }

    public var runCount: Int { configurations.count * repetitions }
}

/// Parsing and validation of `bench migrate`'s options, with errors that say what is allowed.
public enum BenchArguments {
    public static let allStrides = [1, 2, 4, 0]
    public static let maxSizeMiB = 65536
    public static let maxRepetitions = 100

    /// "1,2,4,0" → [1, 2, 4, 0]; duplicates dropped, order kept.
    public static func strides(_ text: String) throws -> [Int] {
        let items = try list(text, what: "stride", example: "1,2,4,0")
        var strides: [Int] = []
        for item in items {
            guard let stride = Int(item), allStrides.contains(stride) else {
                throw GodwitError("invalid stride '\(item)'",
                                  hint: "memtouch writes every page (1), every 2nd (2), every 4th (4) or none (0): use e.g. --strides 1,2,4,0")
            }
            if !strides.contains(stride) { strides.append(stride) }
        }
        return strides
    }

    /// "256,1024", "1GiB", "512MiB" → MiB.
    public static func sizes(_ text: String) throws -> [Int] {
        var sizes: [Int] = []
        for item in try list(text, what: "size", example: "256,1024") {
            let size = try sizeMiB(item)
            if !sizes.contains(size) { sizes.append(size) }
        }
        return sizes
    }

    public static func sizeMiB(_ item: String) throws -> Int {
        let lower = item.lowercased()
        var digits = lower, factor = 1
        for (suffix, multiple) in [("gib", 1024), ("g", 1024), ("mib", 1), ("m", 1)] where lower.hasSuffix(suffix) {
            digits = String(lower.dropLast(suffix.count)); factor = multiple; break
        }
        guard let value = Int(digits.trimmingCharacters(in: .whitespaces)), value >= 1,
              value <= maxSizeMiB / factor, value * factor <= maxSizeMiB else {
            throw GodwitError("invalid size '\(item)'",
                              hint: "give memtouch's memory in MiB from 1 to \(maxSizeMiB), or with a unit: 256, 512MiB, 1GiB")
        }
        return value * factor
    }

    /// "stop-and-copy,post-copy", "all", "godwit" (every move mode), "baselines".
    public static func strategies(_ text: String) throws -> [BenchStrategy] {
        var strategies: [BenchStrategy] = []
        for item in try list(text, what: "mode", example: "stop-and-copy,post-copy") {
            let chosen: [BenchStrategy]
            switch item.lowercased() {
            case "all": chosen = BenchStrategy.allCases
            case "godwit": chosen = BenchStrategy.godwitModes
            case "baselines", "criu": chosen = BenchStrategy.baselines
            default:
                guard let strategy = BenchStrategy(rawValue: item.lowercased()) else {
                    let hint = item.lowercased() == "auto"
                        ? "auto picks one of the others; name the modes to compare"
                        : "use any of \(BenchStrategy.allCases.map(\.rawValue).joined(separator: ", ")), or all, godwit, baselines"
                    throw GodwitError("unknown mode '\(item)'", hint: hint)
                }
                chosen = [strategy]
            }
            for strategy in chosen where !strategies.contains(strategy) { strategies.append(strategy) }
        }
        return strategies.sorted()
    }

    public static func repetitions(_ value: Int) throws -> Int {
        guard (1...maxRepetitions).contains(value) else {
            throw GodwitError("invalid repetition count \(value)", hint: "use --repetitions 1...\(maxRepetitions)")
        }
        return value
    }

    private static func list(_ text: String, what: String, example: String) throws -> [String] {
        let items = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
        guard !items.isEmpty, !items.contains(where: \.isEmpty) else {
            throw GodwitError("empty entry in the \(what) list '\(text)'", hint: "give a comma-separated list, e.g. --\(what)s \(example)")
        }
        return items
    }
}

/// What the bench reads from `godwit move --format json` (API's MoveReport), decoded
/// leniently: fields added later (pre-copy rounds) are picked up when present, and a
/// report without them still decodes.
public struct BenchMoveFigures: Sendable, Equatable {
    public var outcome: String
    public var mode: String?
    public var reason: String?
    public var totalMillis: Double?
    public var frozenMillis: Double?
    public var allLocalMillis: Double?
    public var phases: [BenchPhase]
    public var rounds: Int?
    public var pagesPerRound: [Int]?

    public init(json: Data) throws {
        guard let object = try? JSONSerialization.jsonObject(with: json) as? [String: Any] else {
            throw GodwitError("the move printed no JSON report", hint: "run it by hand with --format json to see what it says")
        }
        guard let outcome = object["outcome"] as? String else {
            throw GodwitError("the move report has no outcome")
        }
        self.outcome = outcome
        mode = object["mode"] as? String
        reason = object["reason"] as? String
        totalMillis = Self.number(object["totalMillis"])
        frozenMillis = Self.number(object["frozenMillis"])
        allLocalMillis = Self.number(object["allLocalMillis"])
        phases = (object["phases"] as? [[String: Any]] ?? []).map { phase in
            BenchPhase(name: phase["name"] as? String ?? "?", millis: Self.number(phase["millis"]) ?? 0,
                       bytes: UInt64(max(0, Self.number(phase["bytes"]) ?? 0)))
        }
        switch object["rounds"] {
        case let count as NSNumber:
            rounds = count.intValue
        case let list as [Any]:
            rounds = list.count
            // Pages found dirty (and sent) in each round; `pages` in older drafts of the report.
            let pages = list.compactMap { ($0 as? [String: Any]).flatMap { Self.number($0["dirtyPages"] ?? $0["pages"]) }.map { Int($0) } }
            pagesPerRound = pages.count == list.count ? pages : nil
        default:
            rounds = nil
        }
    }

    static func number(_ value: Any?) -> Double? {
        (value as? NSNumber)?.doubleValue
    }
}

/// memtouch's report (docs/memtouch.md), the fields the bench uses.
public struct MemtouchReport: Decodable, Sendable, Equatable {
    public struct Verification: Decodable, Sendable, Equatable {
        public var verdict: String
        public var runs: Int
        public var badPages: Int?

        enum CodingKeys: String, CodingKey { case verdict, runs, badPages = "bad_pages" }
    }

    public var pid: Int32?
    public var phase: String
    public var ready: Bool
    public var iterations: Int
    /// When memtouch wrote this report (CLOCK_REALTIME, µs).
    public var reportAtMicros: Int?
    public var missedSleeps: Int
    public var longestGapMicros: Int
    public var longestGapAtMicros: Int?
    public var verification: Verification

    enum CodingKeys: String, CodingKey {
        case pid, phase, ready, iterations, verification
        case missedSleeps = "missed_sleeps"
        case reportAtMicros = "report_at_us"
        case longestGapMicros = "longest_gap_us"
        case longestGapAtMicros = "longest_gap_at_us"
    }

    public static func decode(_ data: Data) throws -> MemtouchReport {
        try JSONDecoder().decode(MemtouchReport.self, from: data)
    }
}

/// The workload programs (memtouch, udpecho), built beside `godwit` by scripts/build-workloads.sh.
public enum BenchWorkload {
    /// A clear error, with the command that builds them, when `path` is missing.
    public static func require(_ path: String) throws {
        guard access(path, X_OK) != 0 else { return }
        throw GodwitError("\(path) is missing",
                          hint: "build the workloads: bash scripts/build-workloads.sh \((path as NSString).deletingLastPathComponent)")
    }
}
