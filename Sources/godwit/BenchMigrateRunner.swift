import Checkpoint
import Foundation
import GodwitCore
import Lab
import Runtime

/// Runs `bench migrate`'s matrix in a lab whose h1 and h2 run godwitd. Godwit's modes go
/// through the CLI (`godwit move`), exactly as a user runs them; the baselines drive CRIU
/// directly through the Checkpoint module, with nothing of Godwit's migration logic.
final class BenchRunner {
    let lab: Lab
    let criu: CRIU
    let godwit: String
    let warmSeconds: Double
    let rawDirectory: String
    /// Runs that would start after this are skipped (the quick profile's 10-minute promise).
    let deadline: Date?
    let source: LabHost, destination: LabHost
    /// `-c key=value` for every container launched (the bench's --compression).
    var launchConfig: [String] = []
    static let responderPort: UInt16 = 7777
    static let reportPath = "/tmp/memtouch.json"
    /// Modes `move` answered "not implemented" for: their other runs are skipped.
    private var unavailable: [BenchStrategy: String] = [:]
    private var counter = 0

    /// Where the daemons and the baselines write CRIU's -v4 logs (one folder per writer);
    /// after each run they are filed under raw/criu/<run>/.
    let criuSpool: String?

    init(lab: Lab, criu: CRIU, godwit: String, warmSeconds: Double, rawDirectory: String, deadline: Date? = nil,
         criuSpool: String? = nil) {
        self.lab = lab; self.criu = criu; self.godwit = godwit; self.warmSeconds = warmSeconds; self.rawDirectory = rawDirectory
        self.criuSpool = criuSpool
        self.deadline = deadline
        source = lab.hosts[0]; destination = lab.hosts[1]
    }

    func note(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

    func runAll(_ plan: BenchPlan) -> [BenchSample] {
        var samples: [BenchSample] = []
        let total = plan.runCount
        for repetition in 1...plan.repetitions {
            for configuration in plan.configurations {
                let label = "\(configuration.strategy.rawValue) stride \(configuration.stride) \(configuration.sizeMiB) MiB #\(repetition)"
                let started = Date()
                var sample: BenchSample
                if let why = unavailable[configuration.strategy] {
                    sample = BenchSample(configuration: configuration, repetition: repetition, outcome: .skipped, note: why)
                } else if let deadline, Date() > deadline {
                    sample = BenchSample(configuration: configuration, repetition: repetition, outcome: .skipped,
                                         note: "not run: the time limit (--max-minutes) was reached")
                } else {
                    do {
                        sample = try run(configuration, repetition: repetition)
                    } catch {
                        let message = (error as? GodwitError)?.message ?? "\(error)"
                        sample = BenchSample(configuration: configuration, repetition: repetition, outcome: .failed, note: message)
                    }
                }
                if sample.outcome == .skipped, let why = sample.note { unavailable[configuration.strategy] = why }
                samples.append(sample)
                fileCRIULogs(String(format: "%03d-", samples.count) + "\(configuration.strategy.rawValue)-s\(configuration.stride)-"
                             + "\(configuration.sizeMiB)M-r\(repetition)")
                let figures = [("app", sample.appDowntimeMillis), ("net", sample.networkDowntimeMillis), ("total", sample.totalMillis)]
                    .compactMap { label, value in value.map { "\(label) \(BenchOutput.figure($0)) ms" } }.joined(separator: ", ")
                note("[\(samples.count)/\(total)] \(label): \(sample.outcome.rawValue)"
                     + (figures.isEmpty ? "" : " — \(figures)") + (sample.verification.map { ", verify \($0)" } ?? "")
                     + (sample.note.map { " (\($0))" } ?? "") + String(format: " [%.0f s]", Date().timeIntervalSince(started)))
            }
        }
        return samples
    }

    /// Moves what the spool holds into raw/criu/RUN/WRITER/ (nothing when logs are off).
    func fileCRIULogs(_ run: String) {
        guard let criuSpool else { return }
        let fm = FileManager.default
        for writer in (try? fm.contentsOfDirectory(atPath: criuSpool)) ?? [] {
            let from = criuSpool + "/" + writer
            let files = (try? fm.contentsOfDirectory(atPath: from)) ?? []
            guard !files.isEmpty else { continue }
            let to = "\((criuSpool as NSString).deletingLastPathComponent)/\(run)/\(writer)"
            try? fm.createDirectory(atPath: to, withIntermediateDirectories: true)
            for file in files { try? fm.moveItem(atPath: from + "/" + file, toPath: to + "/" + file) }
        }
    }

    // MARK: one run

    func run(_ configuration: BenchConfiguration, repetition: Int) throws -> BenchSample {
        counter += 1
        let name = "b\(counter)-" + configuration.strategy.rawValue.split(separator: "-").map { String($0.prefix(2)) }.joined()
        let workload = try Workload(runner: self, name: name, configuration: configuration)
        defer { workload.cleanUp() }
        try workload.launch()
        // Addresses are reused run after run with other MACs: forget the old neighbours.
        _ = try? LabNamespace.run(lab.client.netns, ["ip", "neigh", "flush", "all"])
        let probe = try UDPProbeProcess(lab: lab, executable: godwit, address: workload.address, port: Self.responderPort)
        var probeStopped = false
        defer { if !probeStopped { _ = try? probe.stop() } }
        guard probe.waitUntilAnswering(timeout: 10) else {
            throw GodwitError("the container's UDP responder does not answer the client")
        }
        Thread.sleep(forTimeInterval: 0.3)
        let resumedBefore = probe.resumedCount
        var sample = BenchSample(configuration: configuration, repetition: repetition, outcome: .moved)
        switch configuration.strategy {
        case .criuPageServer, .criuLazy:
            try BaselineMove(runner: self, workload: workload).run(configuration.strategy, into: &sample)
        case .move(let strategy):
            try godwitMove(workload, strategy, into: &sample)
            if sample.outcome != .moved { return sample }
        }
        // The network is back when answers come back; the probe ends the gap then.
        if !probe.waitForResume(after: resumedBefore, timeout: 20) {
            sample.note = "no answer from the responder within 20 s of the move"
        }
        Thread.sleep(forTimeInterval: 0.2)
        let network = try probe.stop()
        probeStopped = true
        // Raw data of the network figure: when each gap of 20 ms or more ended.
        try? Data(probe.transcript.utf8).write(to: URL(fileURLWithPath: "\(rawDirectory)/\(workload.name)-probe.txt"))
        sample.networkDowntimeMillis = network.longestGapMillis
        sample.networkUnanswered = network.unansweredAtEnd
        let report = try workload.verify()
        sample.appDowntimeMillis = Double(report.longestGapMicros) / 1000
        sample.missedSleeps = report.missedSleeps
        sample.verification = report.verification.verdict
        return sample
    }

    private func godwitMove(_ workload: Workload, _ strategy: MigrationStrategy, into sample: inout BenchSample) throws {
        let result = try runGodwit(["move", "--dir", workload.host.stateDirectory, workload.name, "\(destination.name):",
                                    "--mode", strategy.rawValue, "--format", "json"], timeout: 900)
        try? Data((result.stdout + "\n--- stderr\n" + result.stderr).utf8)
            .write(to: URL(fileURLWithPath: "\(rawDirectory)/\(workload.name)-move.txt"))
        let figures = try? BenchMoveFigures(json: Data(result.stdout.utf8))
        guard result.succeeded, let figures else {
            let error = Self.errorLine(result.stderr) ?? "exit \(result.status)"
            if error.lowercased().contains("not implemented") || error.lowercased().contains("not supported yet") {
                sample.outcome = .skipped
                sample.note = "move says: \(error)"
                return
            }
            throw GodwitError("move failed: \(error)")
        }
        guard figures.outcome == "moved" else {
            throw GodwitError("move \(figures.outcome)" + (figures.reason.map { ": \($0)" } ?? ""))
        }
        workload.host = destination
        sample.totalMillis = figures.totalMillis
        sample.frozenMillis = figures.frozenMillis
        sample.allLocalMillis = figures.allLocalMillis
        sample.phases = figures.phases
        sample.rounds = figures.rounds
        sample.pagesPerRound = figures.pagesPerRound
        if let mode = figures.mode, mode != strategy.rawValue { sample.note = "move ran as \(mode)" }
    }

    // MARK: helpers

    /// The "error: ..." line godwit prints, without the prefix.
    static func errorLine(_ stderr: String) -> String? {
        let lines = stderr.split(separator: "\n").map(String.init)
        if let line = lines.first(where: { $0.lowercased().hasPrefix("error: ") }) { return String(line.dropFirst(7)) }
        return lines.last { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
    }

    /// Runs this godwit binary, killed after `timeout` seconds.
    func runGodwit(_ arguments: [String], timeout: TimeInterval = 120) throws -> GodwitRun {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: godwit)
        process.arguments = arguments
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let pid = process.processIdentifier
        let timer = DispatchWorkItem { kill(pid, SIGKILL) }
        DispatchQueue.global().asyncAfter(deadline: .now() + timeout, execute: timer)
        // stderr is read on another thread (a full pipe would stall the child); its bytes
        // come back through a Locked, read once the group says the reader is done.
        let errBox = Locked(Data())
        let group = DispatchGroup()
        group.enter()
        DispatchQueue.global().async {
            let data = err.fileHandleForReading.readDataToEndOfFile()
            errBox.value = data
            group.leave()
        }
        let outData = out.fileHandleForReading.readDataToEndOfFile()
        group.wait()
        process.waitUntilExit()
        timer.cancel()
        return GodwitRun(status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
                         stderr: String(decoding: errBox.value, as: UTF8.self))
    }

    @discardableResult
    func checkGodwit(_ arguments: [String], timeout: TimeInterval = 120) throws -> GodwitRun {
        let result = try runGodwit(arguments, timeout: timeout)
        guard result.succeeded else {
            throw GodwitError("godwit \(arguments.prefix(1).joined()) failed: \(Self.errorLine(result.stderr) ?? "exit \(result.status)")")
        }
        return result
    }
}

/// What a godwit subprocess did.
struct GodwitRun {
    var status: Int32
    var stdout: String
    var stderr: String
    var succeeded: Bool { status == 0 }
}

/// The container of one run: launched on h1 with memtouch and the responder, followed to
/// wherever it moves, deleted at the end.
final class Workload {
    unowned let runner: BenchRunner
    let name: String
    let configuration: BenchConfiguration
    /// Where the daemon that owns it runs (h2 after a Godwit move).
    var host: LabHost
    private(set) var address = ""
    /// Set by a baseline that restored the container outside any daemon.
    var restoredRootfs: String?
    var restoredCgroup: Cgroup?
    var baselineCleanup: (() -> Void)?

    init(runner: BenchRunner, name: String, configuration: BenchConfiguration) throws {
        self.runner = runner; self.name = name; self.configuration = configuration; host = runner.source
    }

    func containerRootfs(on host: LabHost) -> String { host.stateDirectory + "/containers/\(name)/rootfs" }

    func launch() throws {
        try runner.checkGodwit(["launch", "--dir", host.stateDirectory, "busybox", name] + runner.launchConfig)
        let list = try runner.checkGodwit(["list", "--dir", host.stateDirectory, "--format", "json"])
        guard let rows = try JSONSerialization.jsonObject(with: Data(list.stdout.utf8)) as? [[String: Any]],
              let row = rows.first(where: { $0["name"] as? String == name }),
              let ipv4 = (row["ipv4"] as? String)?.split(separator: "/").first.map(String.init), !ipv4.isEmpty else {
            throw GodwitError("container \(name) has no IPv4 address in `godwit list`")
        }
        address = ipv4
        let c = configuration
        try runner.checkGodwit(["exec", "--dir", host.stateDirectory, name, "--", "sh", "-c",
                                "udpecho --port \(BenchRunner.responderPort) </dev/null >/tmp/udpecho.log 2>&1 & "
                                + "memtouch --size \(c.sizeMiB) --stride \(c.stride) --report \(BenchRunner.reportPath) "
                                + "</dev/null >/tmp/memtouch.out 2>&1 &"])
        // Touching runs at roughly 1 GiB/s; allow a slow, busy host ten times that.
        let deadline = Date().addingTimeInterval(30 + Double(c.sizeMiB) / 100)
        while Date() < deadline {
            if let report = try? readReport(), report.ready { break }
            Thread.sleep(forTimeInterval: 0.2)
        }
        guard let report = try? readReport(), report.ready else {
            throw GodwitError("memtouch in \(name) did not become ready")
        }
        Thread.sleep(forTimeInterval: runner.warmSeconds)
    }

    /// memtouch's report, read through the host's view of the container's rootfs.
    func readReport() throws -> MemtouchReport {
        let path = (restoredRootfs ?? containerRootfs(on: host)) + BenchRunner.reportPath
        guard let data = FileManager.default.contents(atPath: path) else { throw GodwitError("no memtouch report at \(path)") }
        return try MemtouchReport.decode(data)
    }

    /// SIGUSR1: memtouch verifies all of its memory and rewrites its report.
    func verify() throws -> MemtouchReport {
        let before = (try? readReport())?.verification.runs ?? 0
        if let cgroup = restoredCgroup {
            let pids = cgroup.processes().filter { HostEnvironment.read("/proc/\($0)/comm")?.hasPrefix("memtouch") == true }
            guard !pids.isEmpty else { throw GodwitError("memtouch is not running in the restored \(name)") }
            for pid in pids { kill(pid, SIGUSR1) }
        } else {
            try runner.checkGodwit(["exec", "--dir", host.stateDirectory, name, "--", "killall", "-USR1", "memtouch"])
        }
        // Verifying 1 GiB takes ~0.15 s; post-copy may still be fetching pages.
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            if let report = try? readReport(), report.verification.runs > before { return report }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw GodwitError("memtouch in \(name) did not verify its memory within 120 s")
    }

    func cleanUp() {
        baselineCleanup?()
        // Both hosts: a failed move can leave the container on either (or, lost, on h2).
        for host in [runner.source, runner.destination] {
            _ = try? runner.runGodwit(["delete", "--dir", host.stateDirectory, "--force", name], timeout: 60)
        }
    }
}
