import ArgumentParser
import Checkpoint
import Foundation
import GodwitCore
import Lab

/// `godwit bench faults`: the fault matrix (issue 13). Phases of a move × faults, each cell
/// a memtouch container moved h1 → h2 with the fault injected at the phase, then checked:
/// exactly one running copy (or none, reported lost, after a post-copy commit), memory
/// verified, the failure naming its phase. The model, verdict and tables live in
/// Lab/FaultMatrix.swift; one cell's mechanics in BenchFaultsRunner.swift.
struct FaultsBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "faults",
        abstract: "The fault matrix: every phase of a move × link, daemon, CRIU, disk and client faults.",
        discussion: """
            Builds a 2-host lab whose h1 daemon pauses each move at the cell's phase \
            (GODWIT_FAULT_FILE) and announces it, injects the fault there (link down or \
            flapping, a daemon SIGKILLed and restarted, CRIU failing or killed, h2's disk \
            filled, the client killed), recovers, and checks the outcome. Cells that can't \
            apply are listed as n/a with why. Results: a Markdown table on stdout and \
            bench/results/<timestamp>-faults/ (results.md, faults.csv, raw/).
            Phases: \(FaultPhase.allCases.map(\.rawValue).joined(separator: ", ")).
            Faults: \(FaultKind.allCases.map(\.rawValue).joined(separator: ", ")).
            """)

    @Option(help: "Comma-separated phases (default: all).") var phases: String?
    @Option(help: "Comma-separated faults (default: all).") var faults: String?
    @Option(help: "Comma-separated PHASE:FAULT cells instead of phases × faults (e.g. restore:link-down).")
    var cells: String?
    @Option(help: "memtouch size in MiB.") var size: Int = 64
    @Option(help: "Results directory (default: bench/results/<timestamp>-faults in the checkout).") var output: String?

    static func parse<T: RawRepresentable & CaseIterable>(_ text: String?, _ what: String) throws -> [T] where T.RawValue == String {
        guard let text else { return Array(T.allCases) }
        return try text.split(separator: ",").map { word in
            let name = word.trimmingCharacters(in: .whitespaces)
            guard let value = T(rawValue: name) else {
                throw ValidationError("unknown \(what) '\(name)': use \(T.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return value
        }
    }

    var matrix: [FaultCell] {
        get throws {
            if let cells {
                return try cells.split(separator: ",").map { word in
                    let parts = word.split(separator: ":").map { $0.trimmingCharacters(in: .whitespaces) }
                    guard parts.count == 2, let phase = FaultPhase(rawValue: parts[0]), let fault = FaultKind(rawValue: parts[1]) else {
                        throw ValidationError("bad cell '\(word)': write PHASE:FAULT, e.g. restore:link-down")
                    }
                    return FaultCell(phase, fault)
                }
            }
            let p: [FaultPhase] = try Self.parse(phases, "phase")
            let f: [FaultKind] = try Self.parse(faults, "fault")
            return p.flatMap { phase in f.map { FaultCell(phase, $0) } }
        }
    }

    func validate() throws {
        _ = try matrix
        if cells != nil, phases != nil || faults != nil { throw ValidationError("--cells replaces --phases and --faults") }
        guard size >= 8, size <= 4096 else { throw ValidationError("--size must be in 8...4096 MiB") }
    }

    func run() async throws {
        try await CLI.run {
            try HostEnvironment.requireRoot(for: "godwit bench faults")
            let cells = try matrix
            let workloads = ["memtouch", "udpecho"].map { GodwitPaths.sibling($0) }
            for path in workloads { try BenchWorkload.require(path) }
            let criu = try CRIU.locate()
            let directory = output ?? MigrateBench.defaultDirectory() + "-faults"
            try FileManager.default.createDirectory(atPath: directory + "/raw", withIntermediateDirectories: true)
            let name = try LabName("fm" + String((0..<4).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! }))
            let guardian = LabGuardian(name)
            var tmpfs: String?
            defer {
                guardian.tearDown()
                if let tmpfs, Self.isMountPoint(tmpfs) { _ = try? Command.run(["umount", "-l", tmpfs]) }
            }
            let started = Date()
            let applicable = cells.filter { $0.notApplicable == nil }.count
            note("bench faults: \(cells.count) cells (\(applicable) to inject) in lab \(name), memtouch \(size) MiB; results in \(directory)")
            do {
                let lab = try guardian.creating { try Lab.create(name: name, hosts: 2) }
                let source = lab.hosts[0], destination = lab.hosts[1]
                // The destination's own file system, so filling it fills nothing else.
                _ = try Command.check(["mount", "-t", "tmpfs", "-o", "size=512m,mode=0700", "godwit-faults", destination.stateDirectory])
                tmpfs = destination.stateDirectory
                let faultFile = lab.stateDirectory + "/fault-h1"
                FileManager.default.createFile(atPath: faultFile, contents: Data())
                var flags: [String: String] = [:], arguments: [String: [String]] = [:]
                for host in lab.hosts {
                    let flagDirectory = lab.stateDirectory + "/criu-flags-" + host.name
                    try FileManager.default.createDirectory(atPath: flagDirectory, withIntermediateDirectories: true)
                    let wrapper = lab.stateDirectory + "/criu-" + host.name
                    try Self.criuWrapper(real: criu.binary.path, flags: flagDirectory).write(toFile: wrapper, atomically: true, encoding: .utf8)
                    chmod(wrapper, 0o755)
                    flags[host.name] = flagDirectory
                    arguments[host.name] = ["--criu", wrapper]
                }
                try LabDaemons.start(lab, godwitd: GodwitPaths.sibling("godwitd"),
                                     extraFiles: [(workloads[0], "usr/bin/memtouch"), (workloads[1], "usr/bin/udpecho")],
                                     httpsPort: LabDaemons.httpsPort, arguments: arguments,
                                     environment: [source.name: ["GODWIT_FAULT_FILE": faultFile]])
                try await LabTrust.enrollAll(lab)
                let bench = BenchRunner(lab: lab, criu: criu, godwit: LabCommand.executable, warmSeconds: 1,
                                        rawDirectory: directory + "/raw")
                let runner = FaultRunner(lab: lab, bench: bench, sizeMiB: size, rawDirectory: directory + "/raw",
                                         faultFile: faultFile, flagDirectory: flags)
                try runner.rememberDaemons()
                var results: [FaultResult] = []
                for (i, cell) in cells.enumerated() {
                    let result = runner.run(cell)
                    results.append(result)
                    note("[\(i + 1)/\(cells.count)] \(cell.label): \(result.outcome.rawValue) \(result.verdict)"
                         + (result.memory.map { ", memory \($0)" } ?? "") + (result.note.isEmpty ? "" : " (\(result.note))")
                         + String(format: " [%.0f s]", result.seconds))
                    // Partial results survive an interrupted run.
                    try? Data(FaultOutput.csv(results).utf8).write(to: URL(fileURLWithPath: directory + "/faults.csv"))
                }
                for host in lab.hosts {
                    try? FileManager.default.copyItem(atPath: host.stateDirectory + "/godwitd.log",
                                                      toPath: directory + "/raw/\(host.name)-godwitd.log")
                }
                try Self.write(results, directory: directory, sizeMiB: size, criuVersion: try? criu.binary.version().description,
                               seconds: Date().timeIntervalSince(started))
            } catch {
                guardian.parkIfInterrupted()
                throw error
            }
        }
    }

    /// CRIU that fails VERB while FLAGS/fail-VERB exists (its log says so, as CRIU's would),
    /// and is the real one otherwise.
    static func criuWrapper(real: String, flags: String) -> String {
        """
        #!/bin/bash
        # godwit bench faults: CRIU fails one verb while a flag file says so.
        verb=$1
        if [ -n "$verb" ] && [ -e '\(flags)'/fail-"$verb" ]; then
            dir=.; log="$verb.log"
            while [ $# -gt 0 ]; do
                case "$1" in -D|--images-dir) dir=$2; shift ;; -o|--log-file) log=$2; shift ;; esac
                shift
            done
            case "$log" in /*) ;; *) log="$dir/$log" ;; esac
            echo "Error (criu/godwit-faults.c:1): injected $verb failure (godwit bench faults)" >> "$log"
            echo "Error: injected $verb failure (godwit bench faults)" >&2
            exit 1
        fi
        exec '\(real)' "$@"

        """
    }

    static func isMountPoint(_ path: String) -> Bool {
        (HostEnvironment.read("/proc/self/mountinfo") ?? "").split(separator: "\n").contains { line in
            line.split(separator: " ").dropFirst(4).first.map(String.init) == path
        }
    }

    static func write(_ results: [FaultResult], directory: String, sizeMiB: Int, criuVersion: String?, seconds: Double) throws {
        let commit = try? Command.run(["git", "-C", GodwitPaths.findUpwards("Package.swift")?.deletingLastPathComponent().path ?? ".",
                                       "rev-parse", "--short", "HEAD"])
        let machine = BenchMachine.describe(criuVersion: criuVersion, bandwidth: nil,
                                            commit: commit?.succeeded == true ? commit!.stdout.trimmingCharacters(in: .whitespacesAndNewlines) : nil)
        let injected = results.filter(\.injected)
        let failed = injected.filter { $0.passed == false }
        let minutes = String(format: "%.1f", seconds / 60)
        let markdown = """
            # godwit bench faults

            memtouch \(sizeMiB) MiB (stride 4) moved h1 → h2 on an unshaped link (post-commit cells at \
            \(FaultRunner.slowLink)), the fault injected while h1's engine paused \(Int(FaultRunner.pauseSeconds)) s \
            at the phase. \(results.count) cells, \(injected.count) injected, \(failed.count) failed; \(minutes) min.
            A cell is ok when exactly one copy runs and its memory verifies (and a failed move names \
            a phase), or none runs and it was reported lost where post-copy's trade-off allows it.

            \(FaultOutput.grid(results))

            \(FaultOutput.markdown(results))

            ## Machine

            \(machine.markdown)

            Per cell: faults.csv. Each move's output and the daemons' logs: raw/.

            """
        try Data(markdown.utf8).write(to: URL(fileURLWithPath: directory + "/results.md"))
        try Data(FaultOutput.csv(results).utf8).write(to: URL(fileURLWithPath: directory + "/faults.csv"))
        print(FaultOutput.grid(results))
        print("")
        print(FaultOutput.markdown(results))
        print("\n\(results.count) cells (\(injected.count) injected, \(failed.count) failed) in \(minutes) min; results in \(directory)")
    }

    func note(_ text: String) { FileHandle.standardError.write(Data((text + "\n").utf8)) }
}
