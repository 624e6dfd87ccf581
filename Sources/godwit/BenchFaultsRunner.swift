import Foundation
import GodwitCore
import Lab
import Runtime

/// Runs the cells of `godwit bench faults` in one lab (h1 → h2). Both daemons run a CRIU
/// wrapper that fails a verb while a flag file says so, and h1's reads its fault
/// (`pause:POINT:SECONDS`) from a file at each move; so a cell changes files, not daemons,
/// and only the daemon-kill cells restart one. h2's state directory is a tmpfs of its
/// own, so "disk full" fills the destination's file system and nothing else.
final class FaultRunner {
    let lab: Lab
    let bench: BenchRunner
    let sizeMiB: Int
    let rawDirectory: String
    /// h1's fault file (GODWIT_FAULT_FILE) and each host's CRIU flag directory.
    let faultFile: String
    let flagDirectory: [String: String]
    /// How each daemon was started (nsenter + env + godwitd argv), to restart a killed one.
    var daemonCommand: [String: [String]] = [:]
    let source: LabHost, destination: LabHost
    /// The source engine's pause at the fault point: the harness's window to act.
    static let pauseSeconds = 3.0
    /// How long a link stays down (or flaps) from the fault point on.
    static let linkFaultSeconds = 10.0
    /// Post-copy's pages must still be arriving when the fault lands: 64 MiB take ~11 s.
    static let slowLink = "50mbit"
    static let moveTimeout = 240.0
    private var counter = 0

    init(lab: Lab, bench: BenchRunner, sizeMiB: Int, rawDirectory: String, faultFile: String, flagDirectory: [String: String]) {
        self.lab = lab; self.bench = bench; self.sizeMiB = sizeMiB; self.rawDirectory = rawDirectory
        self.faultFile = faultFile; self.flagDirectory = flagDirectory
        source = lab.hosts[0]; destination = lab.hosts[1]
    }

    func note(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }

    // MARK: one cell

    func run(_ cell: FaultCell) -> FaultResult {
        if let why = cell.notApplicable { return FaultResult(cell: cell, outcome: .notApplicable, note: why) }
        counter += 1
        let name = "f\(counter)"
        let started = Date()
        var result: FaultResult
        var cleanupNotes: [String] = []
        do {
            result = try runInjected(cell, name: name)
        } catch {
            result = FaultResult(cell: cell, outcome: .notRun, note: "harness: \((error as? GodwitError)?.message ?? "\(error)")")
        }
        cleanupNotes = cleanUp(name)
        if !cleanupNotes.isEmpty { result.note += (result.note.isEmpty ? "" : "; ") + cleanupNotes.joined(separator: "; ") }
        result.seconds = Date().timeIntervalSince(started)
        return result
    }

    private func runInjected(_ cell: FaultCell, name: String) throws -> FaultResult {
        let wrapper = cell.criuFailure.flatMap { if case .wrapperFails(let verb) = $0 { verb } else { nil } }
        // A failing dump never reaches the point after it: such cells don't pause.
        try Data((wrapper == nil ? "pause:\(cell.phase.point):\(Self.pauseSeconds)" : "").utf8)
            .write(to: URL(fileURLWithPath: faultFile))
        let host = cell.fault == .sourceCRIU ? source.name : destination.name
        if let wrapper { FileManager.default.createFile(atPath: flagDirectory[host]! + "/fail-" + wrapper, contents: nil) }
        if cell.phase == .pageTransfer {
            for h in [source, destination] { try lab.shape(h.name, to: try LinkRate(parsing: Self.slowLink)) }
        }
        let configuration = BenchConfiguration(strategy: .move(cell.phase.mode), stride: 4, sizeMiB: sizeMiB)
        let workload = try Workload(runner: bench, name: name, configuration: configuration)
        try workload.launch()
        let logPath = source.stateDirectory + "/godwitd.log"
        let offset = fileSize(logPath)
        let move = try MoveClient(godwit: bench.godwit, arguments: [
            "move", "--dir", source.stateDirectory, name, "\(destination.name):", "--mode", cell.phase.mode.rawValue, "--format", "json",
        ], output: "\(rawDirectory)/\(name)-\(cell.phase.rawValue)-\(cell.fault.rawValue)")
        defer { move.kill() }

        var result = FaultResult(cell: cell, outcome: .notRun)
        var notes: [String] = []
        if wrapper == nil {
            let marker = "fault point \(cell.phase.point.hasPrefix("preCopyRound") ? "preCopyRound" : cell.phase.point) reached (move of \(name),"
            let reached = every(0.05, timeout: 120) {
                self.logText(logPath, from: offset).contains(marker) || move.exitStatus != nil
            } && logText(logPath, from: offset).contains(marker)
            guard reached else {
                _ = move.wait(timeout: Self.moveTimeout)
                let outcome = move.exitStatus == 0 ? "moved" : "failed: \(BenchRunner.errorLine(move.stderr) ?? "?")"
                result = FaultResult(cell: cell, outcome: .notApplicable,
                                     note: "the move never reached \(cell.phase.point) (it \(outcome))")
                return result
            }
            if let why = try inject(cell, move: move, notes: &notes) {
                // Nothing to inject at this point (e.g. no CRIU running): say so, not a verdict.
                _ = move.wait(timeout: Self.moveTimeout)
                return FaultResult(cell: cell, outcome: .notApplicable, note: why)
            }
        }
        // The move ends (or its client was killed), and everything recovers.
        if move.wait(timeout: Self.moveTimeout) == nil {
            notes.append("the move did not end within \(Int(Self.moveTimeout)) s: its client was killed")
            move.kill()
        }
        removeFaults()
        settle(name, notes: &notes)
        result = evaluate(cell, name: name, move: move, workload: workload, notes: &notes)
        result.note = notes.joined(separator: "; ")
        return result
    }

    /// Acts in the pause. Returns why nothing could be injected, or nil.
    private func inject(_ cell: FaultCell, move: MoveClient, notes: inout [String]) throws -> String? {
        switch cell.fault {
        case .linkDown:
            try link(up: false)
            Thread.sleep(forTimeInterval: Self.linkFaultSeconds)
            try link(up: true)
        case .linkFlap:
            let end = Date().addingTimeInterval(Self.linkFaultSeconds)
            while Date() < end {
                try link(up: false)
                Thread.sleep(forTimeInterval: 1)
                try link(up: true)
                Thread.sleep(forTimeInterval: 1)
            }
        case .sourceKill:
            try restartDaemon(source, after: 1)
        case .destinationKill:
            try restartDaemon(destination, after: 2)
        case .sourceCRIU, .destinationCRIU:
            let host = cell.fault == .sourceCRIU ? source : destination
            let pids = criuProcesses(in: host)
            if pids.isEmpty { return "no CRIU process runs on \(host.name) at \(cell.phase.point)" }
            for pid in pids { kill(pid, SIGKILL) }
            notes.append("SIGKILLed \(pids.count) CRIU process(es) on \(host.name)")
        case .diskFull:
            let filler = destination.stateDirectory + "/.faults-filler"
            func free() throws -> UInt64 {
                var stats = statvfs()
                guard statvfs(destination.stateDirectory, &stats) == 0 else { throw GodwitError.errno("statvfs", errno) }
                return UInt64(stats.f_bavail) * UInt64(stats.f_frsize)
            }
            // Written until ENOSPC (a tmpfs refused large fallocates here): MiBs, then pages.
            _ = try Command.run(["dd", "if=/dev/zero", "of=\(filler)", "bs=1M"])
            _ = try Command.run(["dd", "if=/dev/zero", "of=\(filler)-rest", "bs=4096"])
            let left = try free()
            guard left < 64 << 10 else { throw GodwitError("h2's file system could not be filled (\(left / 1024) KiB left)") }
            // Held full until the move ends (removeFaults), however long that takes.
            notes.append("h2's file system filled (\(left / 1024) KiB left)")
        case .clientKill:
            move.kill()
        }
        return nil
    }

    /// Links up, filler gone, no CRIU failures, no pause, unshaped.
    func removeFaults() {
        try? link(up: true)
        for file in [".faults-filler", ".faults-filler-rest"] { try? FileManager.default.removeItem(atPath: destination.stateDirectory + "/" + file) }
        for directory in flagDirectory.values {
            for verb in ["dump", "restore"] { try? FileManager.default.removeItem(atPath: directory + "/fail-" + verb) }
        }
        try? Data().write(to: URL(fileURLWithPath: faultFile))
        for h in [source, destination] { try? lab.shape(h.name, to: .unlimited) }
    }

    /// h1's cable: its port on the fabric bridge.
    func link(up: Bool) throws {
        try _ = try LabNamespace.check(lab.fabricNetns, ["ip", "link", "set", source.endpoint.fabricPort, up ? "up" : "down"])
    }

    // MARK: after the move

    /// Waits until nothing moves any more: no move operation on h1, no journal left, and
    /// no row still Creating on h2 (a destination may finish recording a container that
    /// already runs, e.g. once a full disk has room again).
    private func settle(_ name: String, notes: inout [String]) {
        let journal = source.stateDirectory + "/containers/\(name)/move-journal.json"
        let settled = every(0.5, timeout: 120) {
            !FileManager.default.fileExists(atPath: journal) && !self.movesRunning(on: self.source)
                && self.listed(name, on: self.destination) != "Creating"
        }
        if !settled { notes.append("still moving 120 s after the client ended") }
    }

    private func movesRunning(on host: LabHost) -> Bool {
        guard let run = try? bench.runGodwit(["operation", "list", "--dir", host.stateDirectory, "--format", "json"], timeout: 20),
              run.succeeded,
              let rows = try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [[String: Any]] else { return true }
        return rows.contains { ["running", "pending"].contains(($0["status"] as? String)?.lowercased() ?? "") && "\($0["description"] ?? "")".contains("Moving") }
    }

    private func evaluate(_ cell: FaultCell, name: String, move: MoveClient, workload: Workload,
                          notes: inout [String]) -> FaultResult {
        var result = FaultResult(cell: cell, outcome: .notRun)
        let hosts = [source, destination]
        result.runningOn = hosts.filter { runs(name, on: $0) }.map(\.name)
        switch result.runningOn {
        case []: result.outcome = .lost
        case [source.name]: result.outcome = .rolledBack
        case [destination.name]: result.outcome = .moved
        default: result.outcome = .twoCopies
        }
        if result.runningOn.count == 1, let host = hosts.first(where: { $0.name == result.runningOn[0] }) {
            workload.host = host
            do {
                result.memory = try workload.verify().verification.verdict
            } catch {
                result.memory = "not verified"
                notes.append("verify: \((error as? GodwitError)?.message ?? "\(error)")")
            }
        }
        // What the hosts recorded (the client may be dead): the move's report, or the
        // recovery's record after a daemon restart.
        let records = hosts.flatMap { host in migrationRecords(name, on: host).map { (host.name, $0) } }
        let stderr = move.stderr
        let killedClient = cell.fault == .clientKill
        let failedRecord = records.first { $0.1.status != "moved" }
        result.moveFailed = killedClient || move.exitStatus == nil ? (failedRecord != nil) : move.exitStatus != 0 || failedRecord != nil
        result.reportedPhase = Self.phase(inError: stderr) ?? records.lazy.compactMap { $0.1.phase }.first
        result.reportedLost = stderr.contains("lost") || records.contains { $0.1.status == "lost" }
        if let error = BenchRunner.errorLine(stderr), move.exitStatus != 0, !killedClient {
            notes.insert("move: \(error)", at: 0)
        } else if let record = failedRecord {
            notes.insert("\(record.0) recorded \(record.1.status): \(record.1.reason ?? "")", at: 0)
        }
        for host in hosts {
            if let row = listed(name, on: host), row != "Running", !result.runningOn.contains(host.name) {
                notes.append("\(host.name) lists it \(row)")
            }
        }
        return result
    }

    /// "... (host: h1, phase: images, outcome: ...)" → "images". The last one: CRIU's own
    /// context ("phase: dump") comes before the engine's.
    static func phase(inError text: String) -> String? {
        guard let range = text.range(of: "phase: ", options: .backwards) else { return nil }
        let rest = text[range.upperBound...]
        return String(rest.prefix { $0 != "," && $0 != ")" && $0 != "\n" })
    }

    /// Running: the daemon says so, and its cgroup holds processes that are neither frozen
    /// nor stopped (a restored copy waiting for its commit is stopped, not running).
    func runs(_ name: String, on host: LabHost) -> Bool {
        guard listed(name, on: host) == "Running" else { return false }
        let cgroup = Cgroup(path: "\(host.cgroups.name)/\(name)", layout: CgroupLayout.current())
        let pids = cgroup.processes()
        if HostEnvironment.read(host.cgroups.v1["freezer"].map { "\($0)/\(name)/freezer.state" } ?? "")?.hasPrefix("FROZEN") == true {
            return false
        }
        return pids.contains { pid in
            let state = HostEnvironment.read("/proc/\(pid)/stat")?.split(separator: ")").last?.split(separator: " ").first
            return state != nil && state != "T" && state != "t" && state != "Z"
        }
    }

    /// The container's status in `godwit list` on `host`, nil when not listed.
    func listed(_ name: String, on host: LabHost) -> String? {
        guard let run = try? bench.runGodwit(["list", "--dir", host.stateDirectory, "--format", "json"], timeout: 30), run.succeeded,
              let rows = try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [[String: Any]],
              let row = rows.first(where: { $0["name"] as? String == name }) else { return nil }
        return row["status"] as? String
    }

    struct Record { var status: String; var phase: String?; var reason: String? }

    /// The host's migration history of `name` (its database, read with sqlite3).
    func migrationRecords(_ name: String, on host: LabHost) -> [Record] {
        guard let run = try? Command.run(["sqlite3", "-json", host.stateDirectory + "/godwit.db",
                                          "select status, details from migrations where container = '\(name)' order by id"]),
              run.succeeded,
              let rows = try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [[String: Any]] else { return [] }
        return rows.map { row in
            let details = (row["details"] as? String).flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String] } ?? [:]
            let report = details["report"].flatMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            var phase = report?["failedPhase"] as? String ?? report?["failed_phase"] as? String
            if phase == nil, let recovered = details["recovered"], let r = recovered.range(of: "in the ") {
                phase = "daemon restart (" + recovered[r.upperBound...].replacingOccurrences(of: " phase", with: "") + ")"
            }
            return Record(status: row["status"] as? String ?? "?", phase: phase, reason: report?["reason"] as? String ?? details["recovered"])
        }
    }

    /// Deletes the container on both hosts; anything left (a row, processes) is said and
    /// removed by force, so the next cell starts clean.
    func cleanUp(_ name: String) -> [String] {
        removeFaults()
        var notes: [String] = []
        for host in [source, destination] {
            if daemonPID(host) == nil { try? restartDaemon(host, after: 0) }
            let row = listed(name, on: host)
            _ = try? bench.runGodwit(["delete", "--dir", host.stateDirectory, "--force", name], timeout: 60)
            let cgroup = Cgroup(path: "\(host.cgroups.name)/\(name)", layout: CgroupLayout.current())
            if let still = listed(name, on: host) {
                notes.append("left on \(host.name): a \(still) row (before delete: \(row ?? "none")); daemon restarted to clear it")
                try? cgroup.kill()
                try? restartDaemon(host, after: 0)
                _ = try? bench.runGodwit(["delete", "--dir", host.stateDirectory, "--force", name], timeout: 60)
            } else if !cgroup.processes().isEmpty {
                notes.append("left on \(host.name): \(cgroup.processes().count) process(es) without a row; killed")
                try? cgroup.kill()
            }
        }
        return notes
    }

    // MARK: daemons and processes

    func rememberDaemons() throws {
        for host in lab.hosts {
            guard let pid = daemonPID(host), let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline") else {
                throw GodwitError("no godwitd for \(host.name)")
            }
            let argv = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            let environment = (HostEnvironment.readBytes("/proc/\(pid)/environ") ?? []).split(separator: 0)
                .map { String(decoding: $0, as: UTF8.self) }.filter { $0.hasPrefix("GODWIT_") }
            daemonCommand[host.name] = ["nsenter", "--net=" + host.netnsPath, "env"] + environment + argv
        }
    }

    func daemonPID(_ host: LabHost) -> pid_t? { LabDaemons.pid(of: host, labDirectory: lab.stateDirectory) }

    /// SIGKILL (a crash), then a new daemon after `seconds`, waiting until it answers.
    func restartDaemon(_ host: LabHost, after seconds: Double) throws {
        if let pid = daemonPID(host) {
            kill(pid, SIGKILL)
            _ = poll(timeout: 10) { kill(pid, 0) != 0 }
        }
        Thread.sleep(forTimeInterval: seconds)
        guard let argv = daemonCommand[host.name] else { throw GodwitError("no command to restart \(host.name)'s godwitd") }
        try DetachedProcess.spawn(argv, log: host.stateDirectory + "/godwitd.log")
        guard poll(timeout: 30, { (try? self.bench.runGodwit(["list", "--dir", host.stateDirectory], timeout: 10).succeeded) == true }) else {
            throw GodwitError("godwitd of \(host.name) did not come back")
        }
    }

    /// CRIU processes (run directly or through a loader) in the host's network namespace.
    func criuProcesses(in host: LabHost) -> [pid_t] {
        var netns = stat()
        guard stat(host.netnsPath, &netns) == 0 else { return [] }
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.filter { pid in
            guard let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline"),
                  bytes.split(separator: 0).prefix(5).contains(where: { arg in
                      let text = String(decoding: arg, as: UTF8.self)
                      return text == "criu" || text.hasSuffix("/criu")
                  }) else { return false }
            var mine = stat()
            return stat("/proc/\(pid)/ns/net", &mine) == 0 && mine.st_ino == netns.st_ino
        }
    }

    private func fileSize(_ path: String) -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? UInt64) ?? 0
    }

    private func logText(_ path: String, from offset: UInt64) -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else { return "" }
        defer { try? handle.close() }
        let size = fileSize(path)
        try? handle.seek(toOffset: size >= offset ? offset : 0)
        return String(decoding: (try? handle.readToEnd()) ?? Data(), as: UTF8.self)
    }
}

/// `godwit move` in the background, its output in files (a killed client leaves them too).
final class MoveClient {
    let pid: pid_t
    let output: String
    private var status: Int32?

    init(godwit: String, arguments: [String], output: String) throws {
        self.output = output
        pid = try DetachedProcess.spawn(["sh", "-c", "exec \"$0\" \"$@\" >'\(output).json' 2>'\(output).err'", godwit] + arguments,
                                        log: "/dev/null")
    }

    var exitStatus: Int32? {
        if status == nil { status = DetachedProcess.exitStatus(of: pid) }
        return status
    }

    /// nil when it is still running after `timeout`.
    func wait(timeout: Double) -> Int32? {
        _ = every(0.1, timeout: timeout) { self.exitStatus != nil }
        return exitStatus
    }

    func kill() {
        guard exitStatus == nil else { return }
        Glibc.kill(pid, SIGKILL)
        _ = every(0.05, timeout: 5) { self.exitStatus != nil }
    }

    var stderr: String { (try? String(contentsOfFile: output + ".err", encoding: .utf8)) ?? "" }
}

/// `poll` at a pace that suits conditions which spawn processes or read logs.
func every(_ interval: TimeInterval, timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if condition() { return true }
        if Date() >= deadline { return false }
        Thread.sleep(forTimeInterval: interval)
    }
}
