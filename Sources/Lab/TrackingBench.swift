import Foundation
import GodwitCore
import Memory

// `godwit bench track`: what dirty tracking costs the tracked program. Pre-copy keeps a
// tracker on the container for every round, so its price is paid by the application for
// the whole migration; the pre-copy issue's target is at most 5 % of its throughput.
//
// One memtouch process, measured in alternating windows of the same length: untracked,
// then tracked (the tracker attached before the window starts and scanning every
// `scanInterval` as pre-copy rounds do), repeated. Throughput comes from memtouch's own
// report (iterations and pages written per second of its CLOCK_REALTIME), so the bench
// never guesses what the program did. Pairs of adjacent windows give one ratio each; the
// median ratio is the figure (machine noise moves both windows of a pair alike).

/// A memtouch configuration: the talk's loop (sleep 100 µs, write a page) or a busy one.
public struct TrackingWorkload: Sendable, Equatable {
    public var name: String
    public var sleepMicros: Int
    public var stride: Int

    public init(name: String, sleepMicros: Int, stride: Int) {
        self.name = name; self.sleepMicros = sleepMicros; self.stride = stride
    }

    /// The talk's program: a page every iteration, 100 µs sleeps.
    public static let talk = TrackingWorkload(name: "talk (sleep 100 µs, stride 1)", sleepMicros: 100, stride: 1)
    /// No sleep: every page of the region is rewritten many times per scan interval, so
    /// every scan re-protects all of it and every page takes a write fault again: the worst case.
    public static let busy = TrackingWorkload(name: "busy (no sleep, stride 1)", sleepMicros: 0, stride: 1)
}

public struct TrackingBenchPlan: Sendable {
    public var sizeMiB: Int
    public var workloads: [TrackingWorkload]
    public var trackers: [DirtyTrackerKind]
    public var pairs: Int
    public var windowSeconds: Double
    public var scanInterval: Double
    public var memtouch: String

    public init(sizeMiB: Int, workloads: [TrackingWorkload], trackers: [DirtyTrackerKind], pairs: Int,
                windowSeconds: Double, scanInterval: Double, memtouch: String) {
        self.sizeMiB = sizeMiB; self.workloads = workloads; self.trackers = trackers; self.pairs = pairs
        self.windowSeconds = windowSeconds; self.scanInterval = scanInterval; self.memtouch = memtouch
    }
}

/// One workload × tracker: the per-pair figures and what the tracker did.
public struct TrackingBenchResult: Sendable {
    public var workload: TrackingWorkload
    public var requested: DirtyTrackerKind
    /// What the process was actually tracked with (a process can fall back).
    public var used: String
    public var untrackedRates: [Double]
    public var trackedRates: [Double]
    public var scans: Int
    public var scanMillis: [Double]
    public var dirtyPagesPerScan: [Double]
    public var error: String?
    /// memtouch's verdict on all its memory after every tracker of its workload had run.
    public var verification = "not-run"

    /// tracked ÷ untracked per pair.
    public var ratios: [Double] {
        zip(trackedRates, untrackedRates).compactMap { $1 > 0 ? $0 / $1 : nil }
    }
    /// 1 − median ratio: the share of throughput tracking took (negative: noise).
    public var overhead: BenchStat? {
        BenchStat(ratios.map { 1 - $0 })
    }
}

public enum TrackingBenchError: Error, CustomStringConvertible {
    case memtouch(String)
    public var description: String {
        switch self { case .memtouch(let why): return "memtouch: \(why)" }
    }
}

/// Runs the plan; `log` gets a line per window.
public struct TrackingBench {
    public let plan: TrackingBenchPlan
    public let log: (String) -> Void

    public init(plan: TrackingBenchPlan, log: @escaping (String) -> Void = { _ in }) {
        self.plan = plan; self.log = log
    }

    public func run() throws -> [TrackingBenchResult] {
        var results: [TrackingBenchResult] = []
        for workload in plan.workloads {
            // One process per workload for all trackers: same memory layout, same warm caches.
            let program = try MemtouchProcess(path: plan.memtouch, sizeMiB: plan.sizeMiB, workload: workload)
            var these = plan.trackers.map { measure(program, workload: workload, kind: $0) }
            let status = program.stop()
            for i in these.indices { these[i].verification = status == 0 ? "pass" : "fail (memtouch exit \(status))" }
            results += these
        }
        return results
    }

    private func measure(_ program: MemtouchProcess, workload: TrackingWorkload, kind: DirtyTrackerKind) -> TrackingBenchResult {
        var result = TrackingBenchResult(workload: workload, requested: kind, used: kind.rawValue, untrackedRates: [],
                                         trackedRates: [], scans: 0, scanMillis: [], dirtyPagesPerScan: [])
        do {
            for pair in 1...plan.pairs {
                let untracked = try program.throughput(over: plan.windowSeconds) { Thread.sleep(forTimeInterval: plan.windowSeconds) }
                let tracker = ContainerDirtyTracker(kind: kind, listProcesses: { [TrackedProcess.of(hostPID: program.pid)].compactMap { $0 } })
                defer { tracker.close() }
                // Attaching (ptrace, inject userfaultfd, protect) is a one-off cost per
                // migration, not a throughput cost: it happens before the window.
                let first = try tracker.scan(attachNew: true)
                if let report = first.processes.first {
                    result.used = report.tracker?.rawValue ?? "untracked"
                    if let why = report.fallbackReason { result.used += " (\(why))" }
                }
                let tracked = try program.throughput(over: plan.windowSeconds) {
                    let end = Date().addingTimeInterval(plan.windowSeconds)
                    while Date() < end {
                        Thread.sleep(forTimeInterval: min(plan.scanInterval, max(0, end.timeIntervalSinceNow)))
                        let scan = try tracker.scan(attachNew: true)
                        result.scans += 1
                        result.scanMillis.append(Double(scan.scanNanos) / 1e6)
                        result.dirtyPagesPerScan.append(Double(scan.dirtyPages))
                    }
                }
                result.untrackedRates.append(untracked)
                result.trackedRates.append(tracked)
                log(String(format: "%@, %@, pair %d: untracked %.0f/s, tracked %.0f/s (%.1f %%)",
                           workload.name, kind.rawValue, pair, untracked, tracked, (1 - tracked / max(untracked, 1)) * 100))
            }
        } catch {
            result.error = "\(error)"
            log("\(workload.name), \(kind.rawValue): \(error)")
        }
        return result
    }
}

/// memtouch running as a plain process (tracking doesn't care about namespaces), its
/// report rewritten every 20 ms so window boundaries are read precisely.
final class MemtouchProcess {
    let pid: pid_t
    let reportPath: String
    private var ended: Int32?

    init(path: String, sizeMiB: Int, workload: TrackingWorkload) throws {
        try BenchWorkload.require(path)
        let base = NSTemporaryDirectory() + "gw-track-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        reportPath = base + ".json"
        // Not Foundation's Process: its children inherit this process's blocked signals,
        // and memtouch must see SIGTERM to verify its memory and exit.
        pid = try DetachedProcess.spawn([path, "--size", "\(sizeMiB)", "--stride", "\(workload.stride)",
                                         "--sleep-us", "\(workload.sleepMicros)", "--report", reportPath,
                                         "--report-interval-ms", "20"], log: base + ".log")
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            if let status = DetachedProcess.exitStatus(of: pid) {
                ended = status
                throw TrackingBenchError.memtouch("exited with \(status) before it was ready (log: \(base).log)")
            }
            if let report = try? read(), report.ready { return }
            Thread.sleep(forTimeInterval: 0.05)
        }
        _ = stop()
        throw TrackingBenchError.memtouch("not ready after 120 s")
    }

    func read() throws -> MemtouchReport {
        guard let data = try? Data(contentsOf: URL(fileURLWithPath: reportPath)),
              let report = try? MemtouchReport.decode(data), report.reportAtMicros != nil else {
            throw TrackingBenchError.memtouch("unreadable report \(reportPath)")
        }
        return report
    }

    /// Iterations per second of memtouch's own clock while `body` runs.
    func throughput(over seconds: Double, _ body: () throws -> Void) throws -> Double {
        let start = try read()
        try body()
        // The report is at most 20 ms old; wait for one written after the window.
        var end = try read()
        let startedAt = Double(start.reportAtMicros!)
        let deadline = Date().addingTimeInterval(2)
        while Double(end.reportAtMicros!) <= startedAt + seconds * 1e6 * 0.9, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.01)
            end = try read()
        }
        if let status = DetachedProcess.exitStatus(of: pid) {
            ended = status
            throw TrackingBenchError.memtouch("exited with \(status) while measured")
        }
        let elapsed = (Double(end.reportAtMicros!) - startedAt) / 1e6
        guard elapsed > 0 else { throw TrackingBenchError.memtouch("its report did not advance in \(seconds) s") }
        return Double(end.iterations - start.iterations) / elapsed
    }

    /// SIGTERM makes memtouch verify all its memory and exit 0 when intact, so a tracker
    /// that corrupted memory shows up here. Returns the exit status.
    func stop() -> Int32 {
        if let ended { return ended }
        let status = DetachedProcess.terminate(pid, timeout: 60)
        ended = status
        let base = (reportPath as NSString).deletingPathExtension
        try? FileManager.default.removeItem(atPath: reportPath)
        try? FileManager.default.removeItem(atPath: base + ".log")
        return status
    }
}

/// The table and CSV of a tracking run.
public enum TrackingBenchOutput {
    public static func markdown(_ results: [TrackingBenchResult]) -> String {
        var table = TextTable(header: ["workload", "tracker", "pairs", "untracked it/s", "tracked it/s",
                                       "overhead % (min–max)", "scans", "scan ms", "dirty pages/scan", "verify"])
        for r in results {
            if let error = r.error, r.ratios.isEmpty {
                table.add([r.workload.name, r.used, "0/\(r.untrackedRates.count)", "-", "-", "error: \(error)", "-", "-", "-", r.verification])
                continue
            }
            table.add([r.workload.name, r.used, "\(r.ratios.count)",
                       number(BenchStat(r.untrackedRates)?.median), number(BenchStat(r.trackedRates)?.median),
                       r.overhead.map { String(format: "%.1f (%.1f–%.1f)", $0.median * 100, $0.min * 100, $0.max * 100) } ?? "-",
                       "\(r.scans)", number(BenchStat(r.scanMillis)?.median, digits: 1),
                       number(BenchStat(r.dirtyPagesPerScan)?.median), r.verification])
        }
        return table.markdown()
    }

    public static func csv(_ results: [TrackingBenchResult]) -> String {
        var lines = ["workload,sleep_us,stride,tracker,pair,untracked_per_s,tracked_per_s,ratio"]
        for r in results {
            for (i, (u, t)) in zip(r.untrackedRates, r.trackedRates).enumerated() {
                lines.append("\"\(r.workload.name)\",\(r.workload.sleepMicros),\(r.workload.stride),\"\(r.used)\",\(i + 1),"
                             + String(format: "%.1f,%.1f,%.4f", u, t, u > 0 ? t / u : 0))
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    private static func number(_ value: Double?, digits: Int = 0) -> String {
        value.map { String(format: "%.\(digits)f", $0) } ?? "-"
    }
}
