import API
import ArgumentParser
import Foundation
import GodwitCore

/// `godwit bench system`: the second workload beside memtouch. A Debian container booted by
/// systemd, nginx and PostgreSQL running, moved between two lab hosts in every mode while a
/// client in the lab fetches nginx's page every 10 ms over new connections. Per move: frozen
/// and total time, bytes, and the network-visible downtime (the longest gap between two
/// answered requests around the move). Medians per mode in results.md, every run in
/// raw/system-runs.csv, a chart in system.svg.
struct SystemBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "system",
        abstract: "Frozen time and network downtime of a systemd Debian container (nginx, PostgreSQL) per mode.")

    static let modes = ["stop-and-copy", "pre-copy", "post-copy", "hybrid"]

    @Option(help: "Link rate of each lab host (tc syntax, or unlimited).") var bandwidth: String = "1gbit"
    @Option(help: "Moves per mode (alternately h1 → h2 and back).") var repetitions: Int = 3
    @Option(help: "Results directory (default: bench/results/<timestamp>-system in the checkout).") var output: String?

    func validate() throws {
        guard (1...50).contains(repetitions) else { throw ValidationError("--repetitions must be in 1...50") }
    }

    struct Run {
        var mode: String, repetition: Int, from: String, to: String
        var frozenMillis: Double, totalMillis: Double, bytes: UInt64, networkDowntimeMillis: Double
    }

    func run() throws {
        try HostEnvironment.requireRoot(for: "godwit bench system")
        let directory = output ?? MigrateBench.defaultDirectory() + "-system"
        try FileManager.default.createDirectory(atPath: directory + "/raw", withIntermediateDirectories: true)
        let name = "bs" + String((0..<4).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
        let demo = DemoRun(lab: name)
        defer { demo.tearDown() }
        let started = Date()
        try demo.step(["lab", "up", "--name", name, "--hosts", "2", "--bandwidth", bandwidth])
        let dirs = ["h1": ["--dir", "\(name)/h1"], "h2": ["--dir", "\(name)/h2"]]
        try demo.step(["image", "build", "debian", "--release", "bookworm", "--include",
                       DemoRun.debianPackages.joined(separator: ","), "--alias", "debian"] + dirs["h1"]!)
        try demo.step(["launch", "debian", "web"] + dirs["h1"]!)
        try demo.waitUntilRunning(dirs["h1"]!)
        let ip = try demo.containerAddress(dirs["h1"]!)
        let probe = try HTTPProbe(netns: "/run/netns/godwit-\(name)-client", url: "http://\(ip)/", file: directory + "/raw/system-probe.txt")
        defer { probe.stop() }
        // Unmeasured round trip first: it carries the image to h2 and warms both hosts.
        var at = "h1"
        for mode in ["stop-and-copy", "stop-and-copy"] {
            let to = at == "h1" ? "h2" : "h1"
            try demo.step(["move"] + dirs[at]! + ["web", "\(to):", "--mode", mode, "--format", "json"], quiet: true)
            at = to
        }
        var runs: [Run] = []
        for repetition in 1...repetitions {
            for mode in Self.modes {
                let to = at == "h1" ? "h2" : "h1"
                let begin = Date().timeIntervalSince1970
                let json = try demo.step(["move"] + dirs[at]! + ["web", "\(to):", "--mode", mode, "--format", "json"], quiet: true)
                let end = Date().timeIntervalSince1970
                let report = try APICoding.decoder().decode(MoveReport.self, from: Data(json.utf8))
                // Answers keep coming for a while after the move before the gap is measured.
                Thread.sleep(forTimeInterval: 1.5)
                let gap = probe.longestGap(from: begin - 0.2, to: end + 1.5)
                runs.append(Run(mode: mode, repetition: repetition, from: at, to: to, frozenMillis: report.frozenMillis ?? -1,
                                totalMillis: report.totalMillis, bytes: report.totalBytes, networkDowntimeMillis: gap * 1000))
                print(String(format: "%@ %@ → %@: frozen %.0f ms, network downtime %.0f ms", mode, at, to,
                             report.frozenMillis ?? -1, gap * 1000))
                at = to
            }
        }
        probe.stop()
        try Self.write(runs, directory: directory, bandwidth: bandwidth, seconds: Date().timeIntervalSince(started),
                       failedProbes: probe.failures)
    }

    static func median(_ values: [Double]) -> Double {
        let sorted = values.sorted()
        guard !sorted.isEmpty else { return .nan }
        return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
    }

    static func write(_ runs: [Run], directory: String, bandwidth: String, seconds: Double, failedProbes: Int) throws {
        var csv = "mode,repetition,from,to,frozen_ms,total_ms,bytes,network_downtime_ms\n"
        for r in runs {
            csv += String(format: "%@,%d,%@,%@,%.1f,%.1f,%llu,%.1f\n", r.mode, r.repetition, r.from, r.to, r.frozenMillis,
                          r.totalMillis, r.bytes, r.networkDowntimeMillis)
        }
        try csv.write(toFile: directory + "/raw/system-runs.csv", atomically: true, encoding: .utf8)
        var md = "# System container: Debian bookworm, systemd, nginx, PostgreSQL\n\n"
        md += "Link \(bandwidth); \(runs.count) moves in \(Int(seconds)) s; medians of \(runs.count / max(1, modes.count)) moves per mode; "
        md += "\(failedProbes) client requests failed. Raw: raw/system-runs.csv, raw/system-probe.txt.\n\n"
        md += "Network downtime is the longest gap between two answered requests of a client opening a new "
        md += "connection every 10 ms: a SYN that meets the freeze is sent again by the client's kernel after 1 s "
        md += "(then 3 s), so it moves in steps of about a second, not with the frozen time.\n\n"
        md += "| mode | frozen ms | network downtime ms | total ms | MiB moved |\n|---|---|---|---|---|\n"
        var bars: [(String, Double, Double)] = []
        for mode in modes {
            let these = runs.filter { $0.mode == mode }
            guard !these.isEmpty else { continue }
            let frozen = median(these.map(\.frozenMillis)), net = median(these.map(\.networkDowntimeMillis))
            md += String(format: "| %@ | %.0f | %.0f | %.0f | %.1f |\n", mode, frozen, net, median(these.map(\.totalMillis)),
                         median(these.map { Double($0.bytes) / 1_048_576 }))
            bars.append((mode, frozen, net))
        }
        try md.write(toFile: directory + "/results.md", atomically: true, encoding: .utf8)
        try chart(bars).write(toFile: directory + "/system.svg", atomically: true, encoding: .utf8)
        print("\n" + md + "\nresults in \(directory) (results.md, system.svg, raw/)")
    }

    /// Median frozen time and network downtime per mode, as grouped bars.
    static func chart(_ bars: [(mode: String, frozen: Double, network: Double)]) -> String {
        let top = max(1, bars.map { max($0.frozen, $0.network) }.max() ?? 1) * 1.15
        let width = 120 + bars.count * 130, height = 320, base = 270.0
        func y(_ v: Double) -> Double { base - v / top * 230 }
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(width)\" height=\"\(height)\" font-family=\"sans-serif\" font-size=\"12\">\n"
        svg += "<text x=\"10\" y=\"18\" font-size=\"14\">Debian system container: median frozen time and network downtime (ms)</text>\n"
        svg += "<line x1=\"60\" y1=\"\(base)\" x2=\"\(width - 20)\" y2=\"\(base)\" stroke=\"black\"/>\n"
        for (i, bar) in bars.enumerated() {
            let x = 80 + i * 130
            for (j, (value, colour)) in [(bar.frozen, "#4477aa"), (bar.network, "#ee6677")].enumerated() {
                let bx = x + j * 45
                svg += String(format: "<rect x=\"%d\" y=\"%.1f\" width=\"40\" height=\"%.1f\" fill=\"%@\"/>", bx, y(value), base - y(value), colour)
                svg += String(format: "<text x=\"%d\" y=\"%.1f\">%.0f</text>\n", bx + 4, y(value) - 4, value)
            }
            svg += "<text x=\"\(x)\" y=\"\(Int(base) + 18)\">\(bar.mode)</text>\n"
        }
        svg += "<rect x=\"\(width - 230)\" y=\"30\" width=\"12\" height=\"12\" fill=\"#4477aa\"/><text x=\"\(width - 214)\" y=\"40\">frozen</text>\n"
        svg += "<rect x=\"\(width - 150)\" y=\"30\" width=\"12\" height=\"12\" fill=\"#ee6677\"/><text x=\"\(width - 134)\" y=\"40\">network downtime</text>\n"
        return svg + "</svg>\n"
    }
}

/// A client fetching one URL every 10 ms over new connections, from a network namespace;
/// each answer's completion time goes to a file. Bounded: 30 minutes, and `stop()`.
final class HTTPProbe {
    let file: String
    private let pid: pid_t
    private let stopFile: String

    init(netns: String, url: String, file: String) throws {
        self.file = file
        stopFile = file + ".stop"
        let script = """
            end=$(( EPOCHSECONDS + 1800 ))
            while (( EPOCHSECONDS < end )) && [[ ! -e \(stopFile) ]]; do
              code=$(curl -s -o /dev/null --max-time 10 -w '%{http_code}' '\(url)')
              echo "$EPOCHREALTIME $code" >> \(file)
              sleep 0.01
            done
            """
        pid = try DetachedProcess.spawn(["nsenter", "--net=" + netns, "bash", "-c", script], log: file + ".log")
    }

    func stop() {
        _ = FileManager.default.createFile(atPath: stopFile, contents: nil)
        if !poll(timeout: 15, { DetachedProcess.exitStatus(of: self.pid) != nil }) { kill(-pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: stopFile)
    }

    private var lines: [(time: Double, ok: Bool)] {
        (HostEnvironment.read(file) ?? "").split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            guard f.count == 2, let t = Double(f[0]) else { return nil }
            return (t, f[1] == "200")
        }
    }

    var failures: Int { lines.filter { !$0.ok }.count }

    /// The longest time between two answered requests completing within [from, to].
    func longestGap(from: Double, to: Double) -> Double {
        let times = lines.filter { $0.ok && $0.time >= from && $0.time <= to }.map(\.time)
        return zip(times, times.dropFirst()).map { $1 - $0 }.max() ?? (to - from)
    }
}
