import Foundation
import GodwitCore

/// The bench's outputs: a Markdown table for stdout, CSV (one row per run, one per
/// configuration) and an SVG chart, all from the same samples. No dependencies.
public enum BenchOutput {
    // MARK: numbers

    /// 1234.5 → "1235", 12.34 → "12.3", 0.123 → "0.12".
    public static func figure(_ value: Double) -> String {
        let magnitude = abs(value)
        if magnitude >= 100 { return String(format: "%.0f", value) }
        if magnitude >= 10 { return String(format: "%.1f", value) }
        return String(format: "%.2f", value)
    }

    /// "412 (398–430)" for several runs, "412" for one.
    public static func cell(_ stat: BenchStat?) -> String {
        guard let stat else { return "-" }
        if stat.count == 1 || stat.min == stat.max { return figure(stat.median) }
        return "\(figure(stat.median)) (\(figure(stat.min))–\(figure(stat.max)))"
    }

    public static func ratio(_ value: Double?) -> String {
        guard let value else { return "" }
        return String(format: "×%.2f", value)
    }

    // MARK: Markdown

    public static func markdown(_ summaries: [BenchSummary]) -> String {
        var table = TextTable(header: ["size", "stride", "mode", "runs", "app downtime ms", "net downtime ms",
                                       "total ms", "frozen ms", "all local ms", "MiB on wire", "verify"])
        for s in summaries {
            let c = s.configuration
            func withRatio(_ metric: BenchMetric) -> String {
                let text = cell(s.stat(metric)), r = ratio(s.ratios[metric])
                return r.isEmpty ? text : "\(text) \(r)"
            }
            let runs = s.moved == s.runs ? "\(s.runs)" : "\(s.moved)/\(s.runs)"
            let mode = c.strategy.rawValue + (s.rounds.map { " (\(tickLabel($0.median)) rounds)" } ?? "")
            table.add(["\(c.sizeMiB) MiB", "\(c.stride)", mode, runs,
                       withRatio(.appDowntime), withRatio(.networkDowntime), withRatio(.total),
                       cell(s.stat(.frozen)), cell(s.stat(.allLocal)), cell(s.stat(.wire)), s.verification])
        }
        var text = table.markdown()
        let notes = summaries.flatMap { s in
            s.notes.map { "- \(s.configuration.strategy.rawValue), stride \(s.configuration.stride), \(s.configuration.sizeMiB) MiB: \(shortened($0))" }
        }
        if !notes.isEmpty { text += "\n\nNotes:\n" + notes.joined(separator: "\n") }
        return text
    }

    /// A note as the table shows it (the CSV keeps it whole).
    static func shortened(_ note: String, limit: Int = 240) -> String {
        note.count <= limit ? note : String(note.prefix(limit - 1)) + "…"
    }

    // MARK: CSV

    public static func csvField(_ text: String) -> String {
        guard text.contains(where: { ",\"\n\r".contains($0) }) else { return text }
        return "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }

    private static func csvNumber(_ value: Double?) -> String {
        guard let value, value.isFinite else { return "" }
        return String(format: "%.3f", value)
    }

    private static func csvLine(_ fields: [String]) -> String { fields.map(csvField).joined(separator: ",") }

    /// One row per repetition; phases as "name=millis ms/bytes B" joined by "; ".
    public static func runsCSV(_ samples: [BenchSample]) -> String {
        var lines = [csvLine(["size_mib", "stride", "mode", "baseline", "repetition", "outcome",
                              "app_downtime_ms", "net_downtime_ms", "net_unanswered", "total_ms", "frozen_ms", "all_local_ms",
                              "wire_bytes", "rounds", "pages_per_round", "verification", "missed_sleeps", "phases", "note"])]
        for s in samples {
            let c = s.configuration
            let phases = s.phases.map { "\($0.name)=\(String(format: "%.1f", $0.millis)) ms/\($0.bytes) B" }.joined(separator: "; ")
            lines.append(csvLine([
                "\(c.sizeMiB)", "\(c.stride)", c.strategy.rawValue, c.strategy.baseline?.rawValue ?? "", "\(s.repetition)",
                s.outcome.rawValue, csvNumber(s.appDowntimeMillis), csvNumber(s.networkDowntimeMillis),
                s.networkUnanswered.map { $0 ? "yes" : "no" } ?? "", csvNumber(s.totalMillis), csvNumber(s.frozenMillis),
                csvNumber(s.allLocalMillis), s.bytes.map(String.init) ?? "", s.rounds.map(String.init) ?? "",
                s.pagesPerRound.map { $0.map(String.init).joined(separator: " ") } ?? "",
                s.verification ?? "", s.missedSleeps.map(String.init) ?? "", phases, s.note ?? "",
            ]))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// One row per configuration: median, min, max of each metric, and ratios to the baseline.
    public static func summaryCSV(_ summaries: [BenchSummary]) -> String {
        var header = ["size_mib", "stride", "mode", "baseline", "runs", "moved"]
        for metric in BenchMetric.allCases {
            header += ["\(metric.rawValue)_median", "\(metric.rawValue)_min", "\(metric.rawValue)_max"]
            if metric.hasRatio { header.append("\(metric.rawValue)_ratio") }
        }
        header += ["rounds_median", "verification", "notes"]
        var lines = [csvLine(header)]
        for s in summaries {
            let c = s.configuration
            var row = ["\(c.sizeMiB)", "\(c.stride)", c.strategy.rawValue, c.strategy.baseline?.rawValue ?? "", "\(s.runs)", "\(s.moved)"]
            for metric in BenchMetric.allCases {
                let stat = s.stat(metric)
                row += [csvNumber(stat?.median), csvNumber(stat?.min), csvNumber(stat?.max)]
                if metric.hasRatio { row.append(csvNumber(s.ratios[metric])) }
            }
            row += [csvNumber(s.rounds?.median), s.verification, s.notes.joined(separator: " | ")]
            lines.append(csvLine(row))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    // MARK: SVG

    static func xml(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;").replacingOccurrences(of: "\"", with: "&quot;")
    }

    /// Colours per strategy: baselines in greys, Godwit's modes in colour.
    static func colour(_ strategy: BenchStrategy) -> String {
        switch strategy {
        case .move(.stopAndCopy): return "#1f77b4"
        case .move(.preCopy): return "#2ca02c"
        case .move(.postCopy): return "#d62728"
        case .move(.hybrid): return "#9467bd"
        case .criuPageServer: return "#7f7f7f"
        case .criuLazy: return "#bcbcbc"
        }
    }

    /// Ticks for an axis from 0 to at least `maximum`: 1, 2 or 5 times a power of ten.
    public static func ticks(maximum: Double) -> [Double] {
        guard maximum > 0, maximum.isFinite else { return [0, 1] }
        let rough = maximum / 5
        let power = pow(10, floor(log10(rough)))
        let step = [1.0, 2, 5, 10].map { $0 * power }.first { $0 >= rough } ?? 10 * power
        var ticks: [Double] = []
        var value = 0.0
        while value < maximum + step * 0.999 { ticks.append(value); value += step }
        return ticks
    }

    /// The talk's result slides as one picture: a panel per metric (downtime as the app sees
    /// it, as the network sees it, total time), groups per memory size and stride, one bar
    /// per mode (median) with a min–max whisker.
    /// Ticks of a logarithmic axis: 1, 2 and 5 times each power of ten from `minimum` up to
    /// the first at or above `maximum`.
    public static func logTicks(minimum: Double, maximum: Double) -> [Double] {
        guard minimum > 0, maximum.isFinite, minimum.isFinite else { return [1, 10] }
        var ticks: [Double] = []
        var power = pow(10, floor(log10(minimum)))
        while ticks.count < 40 {
            for m in [1.0, 2, 5] where m * power >= minimum * 0.999 {
                ticks.append(m * power)
                if m * power >= maximum { return ticks }
            }
            power *= 10
        }
        return ticks
    }

    /// Downtimes span 50 ms to 10 s in one chart: on a linear axis every sub-second bar is a
    /// sliver next to stop-and-copy's. These panels are logarithmic (from 10 ms).
    public static let logarithmicMetrics: Set<BenchMetric> = [.appDowntime, .networkDowntime, .frozen]

    public static func svg(_ summaries: [BenchSummary], title: String,
                           metrics: [BenchMetric] = [.appDowntime, .networkDowntime, .frozen, .total]) -> String {
        let groups = Array(Set(summaries.map { GroupKey(sizeMiB: $0.configuration.sizeMiB, stride: $0.configuration.stride) }))
            .sorted { a, b in
                let order = { (s: Int) in BenchArguments.allStrides.firstIndex(of: s) ?? s }
                return (a.sizeMiB, order(a.stride)) < (b.sizeMiB, order(b.stride))
            }
        let strategies = Array(Set(summaries.map(\.configuration.strategy))).sorted()
        let barWidth = 14.0, barGap = 2.0, groupGap = 24.0
        let groupWidth = max(1, Double(strategies.count)) * (barWidth + barGap) - barGap
        let left = 70.0, right = 20.0, panelHeight = 220.0, panelGap = 70.0, top = 60.0
        let plotWidth = max(600, Double(max(groups.count, 1)) * (groupWidth + groupGap))
        let width = left + plotWidth + right
        let legendHeight = 30.0
        let height = top + Double(metrics.count) * (panelHeight + panelGap) + legendHeight
        var out: [String] = []
        out.append(#"<?xml version="1.0" encoding="UTF-8"?>"#)
        out.append(String(format: #"<svg xmlns="http://www.w3.org/2000/svg" width="%.0f" height="%.0f" viewBox="0 0 %.0f %.0f" font-family="sans-serif" font-size="11">"#,
                          width, height, width, height))
        out.append(String(format: #"<rect x="0" y="0" width="%.0f" height="%.0f" fill="white"/>"#, width, height))
        out.append(String(format: #"<text x="%.1f" y="24" font-size="15" font-weight="bold" text-anchor="middle">%@</text>"#,
                          width / 2, xml(title)))
        for (index, metric) in metrics.enumerated() {
            let panelTop = top + Double(index) * (panelHeight + panelGap)
            let bottom = panelTop + panelHeight
            let maximum = summaries.compactMap { $0.stat(metric)?.max }.max() ?? 0
            let logarithmic = logarithmicMetrics.contains(metric)
            let floorValue = 10.0
            let ticks = logarithmic ? logTicks(minimum: floorValue, maximum: max(maximum, floorValue * 10)) : ticks(maximum: maximum)
            let scaleMax = ticks.last ?? 1
            let y = { (v: Double) -> Double in
                if logarithmic {
                    let span = log10(scaleMax) - log10(floorValue)
                    return bottom - (span > 0 ? (log10(max(v, floorValue)) - log10(floorValue)) / span : 0) * panelHeight
                }
                return bottom - (scaleMax > 0 ? v / scaleMax : 0) * panelHeight
            }
            out.append(String(format: #"<text x="%.1f" y="%.1f" font-size="13" font-weight="bold">%@ (median, whisker min–max%@)</text>"#,
                              left, panelTop - 10, xml(metric.title), logarithmic ? "; logarithmic" : ""))
            for tick in ticks {
                out.append(String(format: #"<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="rgb(221,221,221)"/>"#, left, y(tick), left + plotWidth, y(tick)))
                out.append(String(format: #"<text x="%.1f" y="%.1f" text-anchor="end">%@</text>"#, left - 6, y(tick) + 4, xml(tickLabel(tick))))
            }
            out.append(String(format: #"<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>"#, left, bottom, left + plotWidth, bottom))
            out.append(String(format: #"<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>"#, left, panelTop, left, bottom))
            for (g, group) in groups.enumerated() {
                let groupLeft = left + groupGap / 2 + Double(g) * (groupWidth + groupGap)
                for (b, strategy) in strategies.enumerated() {
                    let x = groupLeft + Double(b) * (barWidth + barGap)
                    guard let summary = summaries.first(where: {
                        $0.configuration == BenchConfiguration(strategy: strategy, stride: group.stride, sizeMiB: group.sizeMiB)
                    }), let stat = summary.stat(metric) else {
                        // Not measured (mode skipped, run failed): say so instead of an empty slot.
                        out.append(String(format: #"<text x="%.1f" y="%.1f" font-size="8" fill="gray" transform="rotate(-90 %.1f %.1f)">n/a</text>"#,
                                          x + barWidth / 2 + 3, bottom - 3, x + barWidth / 2 + 3, bottom - 3))
                        continue
                    }
                    out.append(String(format: #"<rect x="%.1f" y="%.1f" width="%.1f" height="%.1f" fill="%@"><title>%@ stride %d %d MiB: %@ ms</title></rect>"#,
                                      x, y(stat.median), barWidth, max(0.5, bottom - y(stat.median)), colour(strategy),
                                      xml(strategy.rawValue), group.stride, group.sizeMiB, xml(cell(stat))))
                    if stat.count > 1 && stat.max > stat.min {
                        let cx = x + barWidth / 2
                        out.append(String(format: #"<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>"#, cx, y(stat.min), cx, y(stat.max)))
                        for v in [stat.min, stat.max] {
                            out.append(String(format: #"<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>"#, cx - 3, y(v), cx + 3, y(v)))
                        }
                    }
                }
                let label = groups.count > 1 && Set(groups.map(\.sizeMiB)).count > 1
                    ? "stride \(group.stride), \(group.sizeMiB) MiB" : "stride \(group.stride)"
                out.append(String(format: #"<text x="%.1f" y="%.1f" text-anchor="middle">%@</text>"#,
                                  groupLeft + groupWidth / 2, bottom + 16, xml(label)))
            }
        }
        // Legend.
        let legendTop = height - legendHeight + 5
        var x = left
        for strategy in strategies {
            out.append(String(format: #"<rect x="%.1f" y="%.1f" width="12" height="12" fill="%@"/>"#, x, legendTop, colour(strategy)))
            out.append(String(format: #"<text x="%.1f" y="%.1f">%@</text>"#, x + 16, legendTop + 10, xml(strategy.rawValue)))
            x += 30 + Double(strategy.rawValue.count) * 6.5
        }
        out.append("</svg>")
        return out.joined(separator: "\n") + "\n"
    }

    /// Whole ticks without decimals ("0", "500"), others as figures.
    static func tickLabel(_ value: Double) -> String {
        value == value.rounded() ? String(format: "%.0f", value) : figure(value)
    }

    struct GroupKey: Hashable { var sizeMiB: Int; var stride: Int }
}

/// What the results were measured on: the same machine kind gives comparable figures.
public struct BenchMachine: Codable, Sendable {
    public var hostname: String
    public var kernel: String
    public var cpus: Int
    public var memoryMiB: Int
    public var cpuModel: String?
    public var criu: String?
    public var godwitCommit: String?
    public var bandwidth: String?
    public var date: String

    public static func describe(criuVersion: String?, bandwidth: String?, commit: String?) -> BenchMachine {
        var uts = utsname()
        uname(&uts)
        func field<T>(_ value: T) -> String {
            withUnsafeBytes(of: value) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        }
        let memInfo = HostEnvironment.read("/proc/meminfo") ?? ""
        let memKiB = memInfo.split(separator: "\n").first { $0.hasPrefix("MemTotal:") }
            .flatMap { $0.split(separator: " ").dropFirst().first.flatMap { Int($0) } } ?? 0
        let cpuModel = (HostEnvironment.read("/proc/cpuinfo") ?? "").split(separator: "\n")
            .first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) }
        let formatter = ISO8601DateFormatter()
        return BenchMachine(hostname: field(uts.nodename), kernel: "\(field(uts.sysname)) \(field(uts.release)) \(field(uts.machine))",
                            cpus: ProcessInfo.processInfo.activeProcessorCount, memoryMiB: memKiB / 1024, cpuModel: cpuModel,
                            criu: criuVersion, godwitCommit: commit, bandwidth: bandwidth, date: formatter.string(from: Date()))
    }

    public var markdown: String {
        var lines = ["- kernel: \(kernel)", "- CPUs: \(cpus)" + (cpuModel.map { " (\($0))" } ?? ""),
                     "- memory: \(memoryMiB) MiB", "- CRIU: \(criu ?? "unknown")",
                     "- link: \(bandwidth ?? "unshaped") (tbf on each lab host's uplink)", "- date: \(date)"]
        if let godwitCommit { lines.append("- godwit: \(godwitCommit)") }
        return lines.joined(separator: "\n")
    }
}
