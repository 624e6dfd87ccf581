import Foundation
import GodwitCore

/// Where a move's frozen time goes: the phases of Godwit's report that lie between the
/// freeze and the commit, as one table (median over the repetitions that moved). The
/// destination's sub-phases ("destination: ...") are part of the restore phase before
/// them; "other" is the frozen time no top-level phase accounts for (polling, requests,
/// the gaps between phases), so a row adds up to the frozen median only approximately
/// (medians of parts are not parts of the median).
public enum FrozenBreakdown {
    /// The top-level phases of the frozen window, in the order a move runs them.
    public static let windowPhases = ["checkpoint", "final scan", "final scan + dirty pages", "final filesystem sync",
                                      "images", "memory + restore", "restore (lazy)", "commit"]
    static let nestedPrefix = "destination: "

    public struct Row: Sendable, Equatable {
        public var configuration: BenchConfiguration
        public var runs: Int
        public var frozen: Double?
        /// Phase name → median ms (only phases the runs had).
        public var phases: [String: Double]
        public var other: Double?
    }

    public static func rows(_ samples: [BenchSample]) -> [Row] {
        let moved = samples.filter { $0.outcome == .moved && !$0.phases.isEmpty && !$0.configuration.strategy.isBaseline }
        let groups = Dictionary(grouping: moved, by: \.configuration)
        return groups.keys.sorted().map { configuration in
            let runs = groups[configuration] ?? []
            let keyedRuns = runs.map(keyed)
            var phases: [String: Double] = [:]
            for name in columns(runs) {
                let values = keyedRuns.compactMap { $0[name] }
                if let stat = BenchStat(values) { phases[name] = stat.median }
            }
            let others = runs.compactMap { run -> Double? in
                guard let frozen = run.frozenMillis else { return nil }
                let inside = run.phases.filter { windowPhases.contains($0.name) }.reduce(0) { $0 + $1.millis }
                return max(0, frozen - inside)
            }
            return Row(configuration: configuration, runs: runs.count, frozen: BenchStat(runs.compactMap(\.frozenMillis))?.median,
                       phases: phases, other: BenchStat(others)?.median)
        }
    }

    /// A sub-phase's key names its parent: "restore (lazy)/destination: criu restore".
    static let separator: Character = "/"

    /// One run's window phases in run order, as (key, ms); a sub-phase is keyed under the
    /// top-level phase before it.
    static func ordered(_ sample: BenchSample) -> [(key: String, millis: Double)] {
        var out: [(key: String, millis: Double)] = []
        var parent: String?
        for phase in sample.phases {
            if windowPhases.contains(phase.name) {
                parent = phase.name
                out.append((phase.name, phase.millis))
            } else if phase.name.hasPrefix(nestedPrefix), let parent {
                out.append((parent + String(separator) + phase.name, phase.millis))
            }
        }
        return out
    }

    static func keyed(_ sample: BenchSample) -> [String: Double] {
        Dictionary(ordered(sample).map { ($0.key, $0.millis) }, uniquingKeysWith: { a, _ in a })
    }

    /// The window's phase keys that occur in `samples`, in the order a move runs them, each
    /// followed by its sub-phases.
    static func columns(_ samples: [BenchSample]) -> [String] {
        var nested: [String: [String]] = [:]
        var present = Set<String>()
        for sample in samples {
            for (key, _) in ordered(sample) {
                if let cut = key.firstIndex(of: separator) {
                    let parent = String(key[..<cut])
                    if !(nested[parent] ?? []).contains(key) { nested[parent, default: []].append(key) }
                } else {
                    present.insert(key)
                }
            }
        }
        return windowPhases.filter(present.contains).flatMap { [$0] + (nested[$0] ?? []) }
    }

    public static func markdown(_ samples: [BenchSample]) -> String {
        let rows = rows(samples)
        guard !rows.isEmpty else { return "" }
        let names = columns(samples.filter { $0.outcome == .moved })
        var table = TextTable(header: ["size", "stride", "mode", "runs", "frozen"] + names.map(label) + ["other"])
        for row in rows {
            let c = row.configuration
            table.add(["\(c.sizeMiB) MiB", "\(c.stride)", c.strategy.rawValue, "\(row.runs)", cell(row.frozen)]
                      + names.map { cell(row.phases[$0]) } + [cell(row.other)])
        }
        return table.markdown()
    }

    public static func csv(_ samples: [BenchSample]) -> String {
        let rows = rows(samples)
        let names = columns(samples.filter { $0.outcome == .moved })
        var lines = [(["size_mib", "stride", "mode", "runs", "frozen_ms"] + names.map { $0 + " ms" } + ["other_ms"])
            .map(BenchOutput.csvField).joined(separator: ",")]
        for row in rows {
            let c = row.configuration
            let fields = ["\(c.sizeMiB)", "\(c.stride)", c.strategy.rawValue, "\(row.runs)", number(row.frozen)]
                + names.map { number(row.phases[$0]) } + [number(row.other)]
            lines.append(fields.map(BenchOutput.csvField).joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Sub-phases are indented with "↳" so the table shows what they belong to.
    static func label(_ key: String) -> String {
        guard let cut = key.firstIndex(of: separator) else { return key }
        let name = key[key.index(after: cut)...]
        return name.hasPrefix(nestedPrefix) ? "↳ " + name.dropFirst(nestedPrefix.count) : String(name)
    }

    static func cell(_ value: Double?) -> String { value.map(BenchOutput.figure) ?? "-" }
    static func number(_ value: Double?) -> String { value.map { String(format: "%.3f", $0) } ?? "" }
}
