import API
import Foundation
import GodwitCore
import Testing

/// Load: several moves at once, both directions, every mode, through the same daemons.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct ConcurrentMoveTests {
    /// The peak resident memory of a process (VmHWM), in bytes.
    static func peakRSS(_ pid: pid_t) -> Int? {
        guard let status = HostEnvironment.read("/proc/\(pid)/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
              let kib = Int(line.split(separator: " ").dropFirst().first ?? "") else { return nil }
        return kib * 1024
    }

    /// Eight containers, four on each host, each with memory being written, a counter and an
    /// open TCP connection, all moved at the same time to the other host, two in each mode:
    /// every move succeeds, every workload carries on with its memory verified and its
    /// connection open, and each daemon's peak RSS stays bounded (reported for the docs).
    @Test func eightMovesAtOnceInBothDirectionsWithMixedModes() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let modes = ["stop-and-copy", "pre-copy", "post-copy", "hybrid"]
        var moves: [(workload: MoveTests.Workload, name: String, from: String, to: String, mode: String)] = []
        defer { for move in moves { move.workload.stop() } }
        for i in 0..<8 {
            let from = i % 2 == 0 ? "h1" : "h2", to = i % 2 == 0 ? "h2" : "h1"
            let name = "c\(i)"
            moves.append((try MoveTests.Workload(lab: lab, name: name, host: from, memoryMiB: 16), name, from, to, modes[i / 2]))
        }
        let rssBefore = ["h1", "h2"].compactMap { lab.daemonPID($0).flatMap(Self.peakRSS) }

        let started = Date()
        let processes = try moves.map { move -> (Process, Pipe, Pipe) in
            let process = Process()
            process.executableURL = URL(fileURLWithPath: LabCLITests.godwit)
            process.arguments = ["move", "--dir", "\(lab.name)/\(move.from)", move.name, "\(move.to):", "--mode", move.mode,
                                 "--format", "json"]
            process.environment = lab.environment
            let output = Pipe(), errors = Pipe()
            process.standardOutput = output
            process.standardError = errors
            try process.run()
            return (process, output, errors)
        }
        // Drained while they run: a full pipe would block a move.
        let results = processes.map { process, output, errors -> (Int32, Data, Data) in
            let out = output.fileHandleForReading.readDataToEndOfFile()
            let err = errors.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            return (process.terminationStatus, out, err)
        }
        let seconds = Date().timeIntervalSince(started)

        for (move, result) in zip(moves, results) {
            let stderr = String(decoding: result.2, as: UTF8.self)
            #expect(result.0 == 0, "\(move.name) \(move.from) -> \(move.to) (\(move.mode)) failed: \(stderr)")
            guard result.0 == 0 else { continue }
            let report = try APICoding.decoder().decode(MoveReport.self, from: result.1)
            #expect(report.outcome == "moved" && report.mode.rawValue == move.mode, "\(move.name): \(report.outcome) \(report.mode)")
            #expect(try lab.container(move.from, move.name) == nil, "\(move.name) is still listed on \(move.from)")
            #expect(try lab.container(move.to, move.name)?.status == .running, "\(move.name) does not run on \(move.to)")
            #expect(lab.processes(move.from, move.name).isEmpty, "\(move.name): processes left on \(move.from)")
            try move.workload.expectHealthy(on: move.to)
        }
        var peaks: [String] = []
        for host in ["h1", "h2"] {
            let peak = try #require(lab.daemonPID(host).flatMap(Self.peakRSS), "no godwitd for \(host)")
            peaks.append("\(host) \(peak >> 20) MiB")
            // A debug build; the bound is what the whole host could afford several times over.
            #expect(peak < 512 << 20, "godwitd on \(host) peaked at \(peak >> 20) MiB")
        }
        print("eight concurrent moves: \(String(format: "%.1f", seconds)) s; godwitd peak RSS \(peaks.joined(separator: ", ")) (before the moves: \(rssBefore.map { "\($0 >> 20) MiB" }.joined(separator: ", ")))")
    }
}
