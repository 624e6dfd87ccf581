import API
import ArgumentParser
import Checkpoint
import Foundation
import GodwitCore
import Lab

/// `godwit bench migrate`: the FOSDEM 2018 talk's experiment. A fresh 2-host lab; for each
/// mode × stride × size × repetition: launch a busybox container on h1 running memtouch and a
/// UDP responder, warm it, start the network probe in the lab's client, move to h2 (Godwit:
/// `godwit move`; baselines: plain CRIU), then read memtouch's longest gap and verification
/// verdict, the probe's longest gap, and the move's times and bytes. Statistics, table, CSV
/// and chart come from Lab's MigrationBench*.swift.
struct MigrateBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "migrate",
        abstract: "Migration downtime and total time per mode and stride, with CRIU baselines (the FOSDEM 2018 experiment).",
        discussion: """
            Builds a 2-host lab, then for every mode, stride and size moves a container running \
            memtouch from h1 to h2 and measures app-visible downtime (memtouch's longest gap), \
            network-visible downtime (a client pinging a UDP responder in the container every \
            millisecond), total and frozen time, bytes per phase, post-copy's time until every page \
            is local, and memtouch's memory verification. Plain CRIU (page-server stop-and-copy, \
            lazy migration) runs in the same lab as the baselines Godwit's figures are divided by. \
            Results: a Markdown table on stdout and bench/results/<timestamp>/ (see docs/benchmarks.md).
            Full profile (defaults): 1 GiB, strides 1,2,4,0, every mode, 3 repetitions. --quick: \
            256 MiB, strides 4,0, 1 repetition (what `make bench` runs).
            """)

    @Option(help: "Link rate of each lab host, e.g. 1gbit, 500mbit, or unlimited.") var bandwidth: String = "1gbit"
    @Option(help: "Page compression of Godwit's moves: auto, on or off (the containers' migration.compression; default auto).")
    var compression: String?
    @Flag(help: "Launch the containers privileged (security.privileged=true), to compare with the default unprivileged ones.")
    var privileged = false
    @Option(help: "Comma-separated: stop-and-copy, pre-copy, post-copy, hybrid, criu-page-server, criu-lazy; or all, godwit, baselines (default: all).")
    var modes: String?
    @Option(help: "Comma-separated memtouch strides: 1, 2, 4 (write every Nth page), 0 (write none) (default: 1,2,4,0).")
    var strides: String?
    @Option(help: "Comma-separated memtouch sizes in MiB, or with a unit: 256, 1GiB (default: 1024).") var sizes: String?
    @Option(help: "Runs per configuration (default: 3).") var repetitions: Int?
    @Flag(help: "The quick profile: 256 MiB, strides 4,0, 1 repetition; other options override it.") var quick = false
    @Option(help: "Seconds memtouch keeps writing before the move.") var warmSeconds: Double = 3
    @Option(help: "Results directory (default: bench/results/<timestamp> in the checkout).") var output: String?
    @Flag(inversion: .prefixedNo,
          help: "Keep CRIU's debug logs (-v4, timestamped) of every run under raw/criu/; they cost CRIU a little time, in every mode alike.")
    var criuLogs = true
    @Option(help: "Skip the runs that would start after this many minutes (default: 9 with --quick, else none).")
    var maxMinutes: Double?

    func plan() throws -> BenchPlan {
        var plan = quick ? BenchPlan.quick : BenchPlan.full
        if let modes { plan.strategies = try BenchArguments.strategies(modes) }
        if let strides { plan.strides = try BenchArguments.strides(strides) }
        if let sizes { plan.sizesMiB = try BenchArguments.sizes(sizes) }
        if let repetitions { plan.repetitions = try BenchArguments.repetitions(repetitions) }
        plan.bandwidth = try Self.rate(bandwidth).map { _ in bandwidth }
        plan.compression = try compression.map { try ConfigKey.validate("migration.compression", $0) }
        if modes != nil || strides != nil || sizes != nil || repetitions != nil { plan.profile += " (modified)" }
        return plan
    }

    static func rate(_ text: String) throws -> Bandwidth? {
        switch try LinkRate(parsing: text) {
        case .unlimited: return nil
        case .limited(let bandwidth): return bandwidth
        }
    }

    func validate() throws {
        do {
            _ = try plan()
        } catch let error as GodwitError {
            throw ValidationError(error.message + (error.hint.map { "\nhint: " + $0 } ?? ""))
        }
        guard warmSeconds >= 0, warmSeconds <= 600 else { throw ValidationError("--warm-seconds must be in [0, 600]") }
        if let maxMinutes, !(maxMinutes > 0) { throw ValidationError("--max-minutes must be greater than 0") }
    }

    func run() async throws {
        try await CLI.run {
            try HostEnvironment.requireRoot(for: "godwit bench migrate")
            let plan = try plan()
            let workloads = ["memtouch", "udpecho"].map { GodwitPaths.sibling($0) }
            for path in workloads { try BenchWorkload.require(path) }
            let criu = try CRIU.locate()
            let criuVersion = try? criu.binary.version().description
            let directory = output ?? Self.defaultDirectory()
            try FileManager.default.createDirectory(atPath: directory + "/raw", withIntermediateDirectories: true)
            let name = try LabName("bm" + String((0..<4).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! }))
            let guardian = LabGuardian(name)
            defer { guardian.tearDown() }
            let started = Date()
            note("bench migrate (\(plan.profile)): \(plan.runCount) runs in lab \(name) at \(plan.bandwidth ?? "unshaped"); results in \(directory)")
            do {
                let lab = try guardian.creating { try Lab.create(name: name, hosts: 2, bandwidth: try Self.rate(bandwidth)) }
                // Each daemon (and this process, for the baselines) spools CRIU's logs; the
                // runner files them per run.
                let spool = criuLogs ? directory + "/raw/criu/spool" : nil
                var environment: [String: [String: String]] = [:]
                if let spool {
                    for host in lab.hosts { environment[host.name] = [CRIULogFile.directoryVariable: spool + "/" + host.name] }
                    setenv(CRIULogFile.directoryVariable, spool + "/bench", 1)
                }
                try LabDaemons.start(lab, godwitd: GodwitPaths.sibling("godwitd"),
                                     extraFiles: [(workloads[0], "usr/bin/memtouch"), (workloads[1], "usr/bin/udpecho")],
                                     httpsPort: LabDaemons.httpsPort, environment: environment)
                try await LabTrust.enrollAll(lab)
                let limit = maxMinutes ?? (quick ? 9 : nil)
                let runner = BenchRunner(lab: lab, criu: criu, godwit: LabCommand.executable, warmSeconds: warmSeconds,
                                         rawDirectory: directory + "/raw",
                                         deadline: limit.map { started.addingTimeInterval($0 * 60) }, criuSpool: spool)
                runner.launchConfig = (plan.compression.map { ["-c", "migration.compression=\($0)"] } ?? [])
                    + (privileged ? ["-c", "security.privileged=true"] : [])
                let samples = runner.runAll(plan)
                if let spool {
                    runner.fileCRIULogs("after-last-run")
                    try? FileManager.default.removeItem(atPath: spool)
                    unsetenv(CRIULogFile.directoryVariable)
                    // About 2 MB of text per GiB moved and run: one compressed archive
                    // (`tar --zstd -xf raw/criu.tar.zst` unpacks it).
                    let raw = directory + "/raw"
                    if (try? Command.run(["tar", "--zstd", "-cf", raw + "/criu.tar.zst", "-C", raw, "criu"]))?.succeeded == true {
                        try? FileManager.default.removeItem(atPath: raw + "/criu")
                    }
                }
                // The daemons' logs go with the lab: keep them for the post-mortem of failed moves.
                for host in lab.hosts {
                    try? FileManager.default.copyItem(atPath: host.stateDirectory + "/godwitd.log",
                                                      toPath: directory + "/raw/\(host.name)-godwitd.log")
                }
                try Self.write(samples: samples, plan: plan, directory: directory, criuVersion: criuVersion,
                               seconds: Date().timeIntervalSince(started), privileged: privileged)
            } catch {
                guardian.parkIfInterrupted()
                throw error
            }
        }
    }

    static func defaultDirectory() -> String {
        let checkout = GodwitPaths.findUpwards("Package.swift")?.deletingLastPathComponent().path
            ?? FileManager.default.currentDirectoryPath
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss'Z'"
        return checkout + "/bench/results/" + formatter.string(from: Date())
    }

    static func write(samples: [BenchSample], plan: BenchPlan, directory: String, criuVersion: String?, seconds: Double,
                      privileged: Bool = false) throws {
        let summaries = BenchSummary.summarize(samples)
        let commit = try? Command.run(["git", "-C", GodwitPaths.findUpwards("Package.swift")?.deletingLastPathComponent().path ?? ".",
                                       "rev-parse", "--short", "HEAD"])
        let machine = BenchMachine.describe(criuVersion: criuVersion, bandwidth: plan.bandwidth,
                                            commit: commit?.succeeded == true ? commit!.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil)
        let table = BenchOutput.markdown(summaries)
        let breakdown = FrozenBreakdown.markdown(samples)
        let sizes = plan.sizesMiB.map { "\($0) MiB" }.joined(separator: ", ")
        let heading = "memtouch moved h1 → h2 at \(plan.bandwidth ?? "unshaped"), \(sizes)"
            + (plan.compression.map { ", compression \($0)" } ?? "")
            + (privileged ? ", privileged containers" : ", unprivileged containers")
        let minutes = String(format: "%.1f", seconds / 60)
        let markdown = """
            # godwit bench migrate: \(plan.profile) profile

            \(heading); strides \(plan.strides.map(String.init).joined(separator: ",")); \
            \(plan.repetitions) repetition(s); \(samples.count) runs in \(minutes) min.
            Cells: median (min–max) over the repetitions; ×N is the ratio to the CRIU baseline \
            (stop-and-copy and pre-copy ÷ criu-page-server, post-copy and hybrid ÷ criu-lazy).

            \(table)
            \(breakdown.isEmpty ? "" : "\n## Frozen window by phase (median ms)\n\nFrom the freeze to the commit, per top-level phase of the move's report; ↳ rows are the destination's parts of the restore phase before them; other = frozen time no phase accounts for.\n\n" + breakdown + "\n")
            ## Machine

            \(machine.markdown)

            Chart: chart.svg. Per configuration: summary.csv, frozen-phases.csv. Per run: raw/runs.csv, raw/samples.json.
            How to read these: docs/benchmarks.md.

            """
        func save(_ text: String, _ file: String) throws {
            try Data(text.utf8).write(to: URL(fileURLWithPath: directory + "/" + file))
        }
        try save(markdown, "results.md")
        try save(BenchOutput.summaryCSV(summaries), "summary.csv")
        try save(FrozenBreakdown.csv(samples), "frozen-phases.csv")
        try save(BenchOutput.runsCSV(samples), "raw/runs.csv")
        try save(BenchOutput.svg(summaries, title: "godwit bench migrate: " + heading), "chart.svg")
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try Data(encoder.encode(samples)).write(to: URL(fileURLWithPath: directory + "/raw/samples.json"))
        try Data(encoder.encode(machine)).write(to: URL(fileURLWithPath: directory + "/machine.json"))
        try Data(encoder.encode(plan)).write(to: URL(fileURLWithPath: directory + "/plan.json"))
        print(table)
        if !breakdown.isEmpty { print("\nFrozen window by phase (median ms):\n" + breakdown) }
        print("\n\(samples.count) runs in \(minutes) min; results in \(directory) (results.md, summary.csv, chart.svg, raw/)")
    }

    func note(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }
}

/// `godwit bench _udp-probe`: the client half of the network-downtime probe, run by the
/// bench inside the lab's client namespace.
struct UDPProbeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "_udp-probe", shouldDisplay: false)

    @Option var address: String
    @Option var port: UInt16
    @Option var intervalUs: Int = 1000
    @Option var maxSeconds: Double = 900

    func run() throws {
        signal(SIGTERM) { _ in UDPProbe.probeStopRequested.store(true, ordering: .relaxed) }
        signal(SIGPIPE, SIG_IGN)
        let result = try UDPProbe.run(address: address, port: port, intervalMicros: max(100, intervalUs), maxSeconds: maxSeconds,
                                      lifeline: STDIN_FILENO) {
            FileHandle.standardOutput.write(Data((UDPProbe.readyLine + "\n").utf8))
        } onResumed: { gap in
            FileHandle.standardOutput.write(Data((UDPProbe.resumedLine + String(format: " %.1f\n", gap)).utf8))
        }
        FileHandle.standardOutput.write(Data((String(decoding: try JSONEncoder().encode(result), as: UTF8.self) + "\n").utf8))
    }
}
