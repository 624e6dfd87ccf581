import ArgumentParser
import Foundation
import GodwitCore
import Lab

/// What dirty tracking costs the tracked program (the pre-copy issue's ≤ 5 % target).
struct TrackBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "track",
        abstract: "Throughput of memtouch with and without a dirty tracker scanning it, side by side.",
        discussion: """
            Alternating windows of the same memtouch process: untracked, then tracked (scanned \
            every --interval seconds, as pre-copy rounds do). The figure is the median over pairs \
            of 1 - tracked/untracked. Results: a Markdown table on stdout and \
            bench/results/<timestamp>-track/ (see docs/benchmarks.md).
            """)

    @Flag(help: "256 MiB, 3 pairs of 2 s windows (what `make bench` runs).") var quick = false
    @Option(help: "memtouch's memory in MiB (default 1024; --quick 256).") var size: Int?
    @Option(help: "Untracked/tracked window pairs per case (default 5; --quick 3).") var pairs: Int?
    @Option(help: "Seconds per window (default 3; --quick 2).") var window: Double?
    @Option(help: "Seconds between two scans while tracked.") var interval: Double = 0.5
    @Option(help: "Trackers, comma-separated: uffd-wp, soft-dirty, hashing.") var trackers = "uffd-wp,hashing"
    @Option(help: "Workloads, comma-separated: talk (sleep 100 µs), busy (no sleep).") var workloads = "talk,busy"
    @Option(help: "Results directory (default: bench/results/<timestamp>-track in the checkout).") var output: String?

    func validate() throws {
        if let size, !(16...65536).contains(size) { throw ValidationError("--size must be 16..65536 MiB") }
        if let pairs, !(1...100).contains(pairs) { throw ValidationError("--pairs must be 1..100") }
        if let window, !(window > 0 && window <= 600) { throw ValidationError("--window must be in (0, 600] seconds") }
        guard interval > 0, interval <= 60 else { throw ValidationError("--interval must be in (0, 60] seconds") }
        _ = try trackerKinds()
        _ = try workloadList()
    }

    func trackerKinds() throws -> [DirtyTrackerKind] {
        try trackers.split(separator: ",").map { name in
            guard let kind = DirtyTrackerKind(rawValue: String(name)) else {
                throw ValidationError("unknown tracker '\(name)': use \(DirtyTrackerKind.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return kind
        }
    }

    func workloadList() throws -> [TrackingWorkload] {
        try workloads.split(separator: ",").map { name in
            switch name {
            case "talk": return .talk
            case "busy": return .busy
            default: throw ValidationError("unknown workload '\(name)': use talk, busy")
            }
        }
    }

    func run() throws {
        try HostEnvironment.requireRoot(for: "godwit bench track")
        let plan = TrackingBenchPlan(sizeMiB: size ?? (quick ? 256 : 1024), workloads: try workloadList(), trackers: try trackerKinds(),
                                     pairs: pairs ?? (quick ? 3 : 5), windowSeconds: window ?? (quick ? 2 : 3),
                                     scanInterval: interval, memtouch: GodwitPaths.sibling("memtouch"))
        let started = Date()
        let results = try TrackingBench(plan: plan, log: { FileHandle.standardError.write(Data(($0 + "\n").utf8)) }).run()
        let table = TrackingBenchOutput.markdown(results)
        print(table)
        let directory = output ?? MigrateBench.defaultDirectory() + "-track"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let machine = BenchMachine.describe(criuVersion: nil, bandwidth: nil, commit: nil)
        let text = """
            # Dirty-tracking overhead

            memtouch \(plan.sizeMiB) MiB, \(plan.pairs) pairs of \(String(format: "%g", plan.windowSeconds)) s windows \
            (untracked, then tracked with a scan every \(String(format: "%g", plan.scanInterval)) s), \
            \(String(format: "%.1f", Date().timeIntervalSince(started) / 60)) minutes. Overhead = 1 − tracked/untracked \
            iterations per second, median (min–max) over the pairs; verify = memtouch's check of all its memory at the end.

            \(table)

            \(machine.markdown)

            """
        try Data(text.utf8).write(to: URL(fileURLWithPath: directory + "/results.md"))
        try Data(TrackingBenchOutput.csv(results).utf8).write(to: URL(fileURLWithPath: directory + "/runs.csv"))
        print("\nResults: \(directory)")
        if results.contains(where: { $0.verification != "pass" || $0.error != nil }) {
            throw ExitCode(1)
        }
    }
}
