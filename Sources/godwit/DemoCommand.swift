import API
import ArgumentParser
import Client
import Foundation
import GodwitCore
import Lab

/// `make demo`: two simulated hosts, a container with a memory workload moved live from one
/// to the other (post-copy) and back (stop-and-copy), with a report. Every step is the CLI a user would type, printed before it runs.
struct DemoCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo", abstract: "Run the main job on two simulated hosts, with a report.")

    @Option(help: "Memory the workload touches, in MiB.") var memory: Int = 256
    @Option(help: "Link rate between the hosts (tc syntax).") var bandwidth: String = "1gbit"
    @Option(help: "busybox (a memory workload, the default) or debian (systemd with nginx and PostgreSQL, moved in every mode).")
    var image: String = "busybox"

    func run() throws {
        try HostEnvironment.requireRoot(for: "godwit demo")
        guard ["busybox", "debian"].contains(image) else {
            throw GodwitError("unknown demo image '\(image)'", hint: "use --image busybox or --image debian")
        }
        let name = "demo" + String((0..<4).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
        let demo = DemoRun(lab: name)
        defer { demo.tearDown() }
        if image == "debian" {
            try demo.runSystem(bandwidth: bandwidth)
        } else {
            try demo.run(memoryMiB: memory, bandwidth: bandwidth)
        }
    }
}

final class DemoRun {
    let lab: String
    let godwit = GodwitPaths.sibling("godwit")
    var report = TextTable(header: ["step", "result"])

    init(lab: String) { self.lab = lab }

    /// Runs one CLI step, echoing it; throws with its stderr when it fails.
    @discardableResult
    func step(_ args: [String], quiet: Bool = false) throws -> String {
        print("$ godwit " + args.joined(separator: " "))
        let start = Date()
        let result = try Command.run([godwit] + args)
        let seconds = Date().timeIntervalSince(start)
        if !quiet, !result.stdout.isEmpty { print(result.stdout.trimmingCharacters(in: .newlines)) }
        guard result.succeeded else {
            throw GodwitError("demo step `godwit \(args.joined(separator: " "))` failed: \(result.lastErrorLine)")
        }
        lastSeconds = seconds
        return result.stdout
    }
    var lastSeconds = 0.0

    func run(memoryMiB: Int, bandwidth: String) throws {
        let check = try step(["check", "--format", "json"], quiet: true)
        if let data = check.data(using: .utf8), let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
           let strategies = json["strategies"] as? [[String: Any]] {
            let usable = strategies.filter { (($0["source"] as? [String: Any])?["available"] as? Bool) == true }
                .compactMap { $0["strategy"] as? String }
            report.add(["host check", "strategies: " + usable.joined(separator: ", ") + "; tracker: \(json["dirtyTracker"] ?? "none")"])
        }
        try step(["lab", "up", "--name", lab, "--hosts", "2", "--bandwidth", bandwidth])
        let link = try step(["lab", "link-test", "--name", lab, "h1", "h2", "--seconds", "2", "--format", "json"], quiet: true)
        if let data = link.data(using: .utf8), let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any],
           let mbit = json["megabitsPerSecond"] as? Double {
            report.add(["link h1 → h2", String(format: "%.0f Mbit/s (shaped at %@)", mbit, bandwidth)])
        }
        let h1 = ["--dir", "\(lab)/h1"]
        try step(["launch", "busybox", "web"] + h1)
        try step(["exec"] + h1 + ["web", "--", "sh", "-c",
                  "memtouch --size \(memoryMiB) --stride 4 --report /tmp/memtouch.json </dev/null >/dev/null 2>&1 &"])
        guard poll(timeout: 60, { (try? self.memtouchReport(h1))?["ready"] as? Bool == true }) else {
            throw GodwitError("memtouch did not get ready in the container")
        }
        try step(["list"] + h1)
        let h2 = ["--dir", "\(lab)/h2"]
        // The headline: live moves, post-copy there and stop-and-copy back.
        for (from, to, mode) in [(h1, "h2", "post-copy"), (h2, "h1", "stop-and-copy")] {
            let json = try step(["move"] + from + ["web", "\(to):", "--mode", mode, "--format", "json"], quiet: true)
            let moved = try APICoding.decoder().decode(MoveReport.self, from: Data(json.utf8))
            print(moved.text)
            let frozen = moved.frozenMillis.map { String(format: "%.0f ms", $0) } ?? "-"
            var line = String(format: "%@, total %.2f s, frozen %@, %.0f MiB over the link", moved.outcome, moved.totalMillis / 1000,
                              frozen, Double(moved.totalBytes) / 1048576)
            if let local = moved.allLocalMillis { line += String(format: ", all memory local after %.2f s", local / 1000) }
            report.add(["move \(mode) → \(to)", line])
        }
        try step(["list"] + h1)
        try step(["list"] + h2)
        try step(["exec"] + h1 + ["web", "--", "sh", "-c", "kill -USR1 $(pidof memtouch)"])
        guard poll(timeout: 10, { ((try? self.memtouchReport(h1))?["verification"] as? [String: Any])?["runs"] as? Int ?? 0 > 0 }) else {
            throw GodwitError("memtouch did not verify its memory after the moves")
        }
        let mt = try memtouchReport(h1)
        let verdict = (mt["verification"] as? [String: Any])?["verdict"] as? String ?? "?"
        let gap = (mt["longest_gap_us"] as? Double).map { String(format: "%.2f s", $0 / 1e6) } ?? "?"
        report.add(["workload after both moves", "memory verification: \(verdict); longest pause it saw: \(gap)"])
        try step(["delete", "--force", "web"] + h1)
        print("\nGodwit demo report (lab \(lab))\n" + report.render())
    }

    func memtouchReport(_ h1: [String]) throws -> [String: Any] {
        let text = try Command.run([godwit, "exec"] + h1 + ["web", "--", "cat", "/tmp/memtouch.json"]).stdout
        return (try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]) ?? [:]
    }

    func tearDown() {
        print("$ godwit lab down --name \(lab)")
        _ = try? Command.run([godwit, "lab", "down", "--name", lab])
    }
}
