import ArgumentParser
import Foundation
import Synchronization
import GodwitCore
import Lab

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Benchmarks that print tables and write CSV.",
        subcommands: [LinkBench.self, MigrateBench.self, SystemBench.self, TrackBench.self, FaultsBench.self, UDPProbeCommand.self])
}

/// Lab link throughput, shaped and unshaped: the figure every migration timing depends on.
struct LinkBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "link", abstract: "TCP throughput h1 -> h2 in a fresh 2-host lab, at 1gbit and unshaped.")

    @Option(help: "Seconds per run.") var seconds: Double = 3
    @Option(help: "Runs per case.") var runs: Int = 3
    @Option(help: "CSV file (default: bench/results/link.csv in the checkout).") var output: String?

    func validate() throws {
        guard runs >= 1 else { throw ValidationError("--runs must be at least 1") }
        guard seconds > 0, seconds <= 600 else { throw ValidationError("--seconds must be in (0, 600]") }
    }

    struct Case {
        var label: String
        var rate: LinkRate
    }

    func run() throws {
        try HostEnvironment.requireRoot(for: "godwit bench link")
        let name = try LabName("bench" + String((0..<3).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! }))
        let guardian = LabGuardian(name)
        defer { guardian.tearDown() }
        do {
            // An interrupt during creation waits for it to finish, so teardown sees everything.
            let lab = try guardian.creating { try Lab.create(name: name, hosts: 2) }
            try measure(lab)
        } catch {
            // Probes killed by an interrupt's teardown make the measurement fail; the
            // interrupt, not that failure, is what ends this run.
            guardian.parkIfInterrupted()
            throw error
        }
    }

    private func measure(_ lab: Lab) throws {
        let cases = [Case(label: "1gbit", rate: .limited(Bandwidth(bitsPerSecond: 1_000_000_000))),
                     Case(label: "unshaped", rate: .unlimited)]
        var csv = ["case,rate,run,from,to,bytes,seconds,mbit_per_s"]
        var table = TextTable(header: ["link", "shaping", "runs", "median Mbit/s", "min–max Mbit/s"])
        for benchCase in cases {
            for host in lab.hosts { try lab.shape(host.name, to: benchCase.rate) }
            var figures: [Double] = []
            for run in 1...runs {
                let result = try LinkTest.run(lab: lab, from: "h1", to: "h2", seconds: seconds, executable: LabCommand.executable)
                figures.append(result.megabitsPerSecond)
                csv.append("\(benchCase.label),\(benchCase.rate),\(run),h1,h2,\(result.bytes),"
                           + String(format: "%.3f,%.1f", result.seconds, result.megabitsPerSecond))
                FileHandle.standardError.write(Data("\(benchCase.label) run \(run): \(String(format: "%.1f", result.megabitsPerSecond)) Mbit/s\n".utf8))
            }
            let sorted = figures.sorted()
            let median = sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
            table.add(["h1 → h2", benchCase.label, "\(runs)", String(format: "%.1f", median),
                         String(format: "%.1f–%.1f", sorted.first!, sorted.last!)])
        }
        print(table.markdown())
        let path = output ?? defaultOutput()
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try Data((csv.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        print("\nCSV: \(path) (\(String(format: "%g", seconds)) s per run; tbf burst \(Bandwidth(bitsPerSecond: 1_000_000_000).tbfBurstBytes) B at 1gbit)")
    }

    /// `make bench` runs from the checkout; an installed binary writes below the current directory.
    func defaultOutput() -> String {
        let checkout = GodwitPaths.findUpwards("Package.swift")?.deletingLastPathComponent().path
            ?? FileManager.default.currentDirectoryPath
        return checkout + "/bench/results/link.csv"
    }
}

/// Removes a benchmark's lab exactly once: at the end, on error, or on Ctrl-C / SIGTERM /
/// SIGHUP (the probes stop by themselves through their lifeline; the lab would stay).
/// The signal handler only writes the signal number to a pipe (async-signal-safe); a thread
/// reading the pipe does the teardown, which spawns processes and must not run in a handler.
final class LabGuardian: Sendable {
    private let name: LabName
    /// Whether the lab is gone, and whether a signal asked for it. Held while a lab is
    /// being created, so that a teardown waits for the creation to finish.
    private let state = Mutex<(done: Bool, interrupted: Bool)>((false, false))

    init(_ name: LabName) {
        self.name = name
        var fds: [Int32] = [-1, -1]
        guard pipe(&fds) == 0 else { return }
        let readEnd = fds[0]
        labGuardianSignalFD.store(fds[1], ordering: .sequentiallyConsistent)
        let thread = Thread { [self] in
            var signalNumber: UInt8 = 0
            guard read(readEnd, &signalNumber, 1) == 1 else { return }
            state.withLock { $0.interrupted = true }
            FileHandle.standardError.write(Data("\ninterrupted: removing lab \(name)\n".utf8))
            tearDown()
            exit(128 + Int32(signalNumber))
        }
        thread.start()
        for signalNumber in [SIGINT, SIGTERM, SIGHUP] {
            signal(signalNumber) { received in
                var byte = UInt8(truncatingIfNeeded: received)
                _ = write(labGuardianSignalFD.load(ordering: .relaxed), &byte, 1)
            }
        }
    }

    /// After an interrupt the guardian thread tears down and exits the process; the caller
    /// must not race it with an error exit of its own.
    func parkIfInterrupted() {
        guard state.withLock({ $0.interrupted }) else { return }
        while true { sleep(60) }
    }

    func creating<T>(_ body: () throws -> T) rethrows -> T {
        try state.withLock { _ in try body() }
    }

    func tearDown() {
        state.withLock { s in
            guard !s.done else { return }
            s.done = true
            do {
                try Lab.destroy(name: name)
            } catch {
                FileHandle.standardError.write(Data("warning: \(error)\n".utf8))
            }
        }
    }
}

/// Where the signal handler writes; a C handler can't capture context. An atomic load is
/// async-signal-safe.
private let labGuardianSignalFD = Atomic<Int32>(-1)
