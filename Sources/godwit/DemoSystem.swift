import API
import Foundation
import GodwitCore

/// `godwit demo --image debian`: a Debian container booted by systemd, running nginx and
/// PostgreSQL from Debian's packages, moved h1 → h2 → h1 → h2 → h1 in the four modes
/// while a client fetches nginx's page. The image is built once per machine (cached) and
/// exists on h1 only: the first move carries it.
extension DemoRun {
    /// The project's Debian recipe; the tests build the same one, so one cached build
    /// serves both.
    static let debianPackages = ["nginx-light", "postgresql", "dbus", "iproute2", "procps", "curl"]

    func runSystem(bandwidth: String) throws {
        try step(["lab", "up", "--name", lab, "--hosts", "2", "--bandwidth", bandwidth])
        let h1 = ["--dir", "\(lab)/h1"], h2 = ["--dir", "\(lab)/h2"]
        try step(["image", "build", "debian", "--release", "bookworm", "--include", Self.debianPackages.joined(separator: ","),
                  "--alias", "debian"] + h1)
        report.add(["image", String(format: "debian (bookworm, systemd, nginx, PostgreSQL), ready in %.1f s", lastSeconds)])
        try step(["launch", "debian", "web"] + h1)
        try waitUntilRunning(h1)
        report.add(["boot", "systemd: running"])
        try step(["exec"] + h1 + ["web", "--", "systemctl", "--no-pager", "--plain", "list-units", "--type=service", "--state=running"])
        try step(["check", "web"] + h1)
        let ip = try containerAddress(h1)
        let client = ["nsenter", "--net=/run/netns/godwit-\(lab)-client", "curl", "-s", "-o", "/dev/null", "--max-time", "30",
                      "-w", "%{http_code}", "http://\(ip)/"]
        var hosts = (h1, "h1")
        for (mode, to) in [("stop-and-copy", "h2"), ("pre-copy", "h1"), ("post-copy", "h2"), ("hybrid", "h1")] {
            let json = try step(["move"] + hosts.0 + ["web", "\(to):", "--mode", mode, "--format", "json"], quiet: true)
            let moved = try APICoding.decoder().decode(MoveReport.self, from: Data(json.utf8))
            print(moved.text)
            hosts = to == "h2" ? (h2, "h2") : (h1, "h1")
            let code = (try? Command.run(client))?.stdout ?? "?"
            let units = (try? Command.run([godwit, "exec"] + hosts.0 + ["web", "--", "systemctl", "is-system-running"]))?.stdout
                .trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"
            let frozen = moved.frozenMillis.map { String(format: "%.0f ms", $0) } ?? "-"
            report.add(["move \(mode) → \(to)", String(format: "%@, total %.2f s, frozen %@, %.0f MiB; nginx %@, systemd %@",
                                                     moved.outcome, moved.totalMillis / 1000, frozen,
                                                     Double(moved.totalBytes) / 1048576, code, units)])
        }
        try step(["image", "list"] + h2)
        try step(["delete", "--force", "web"] + hosts.0)
        print("\nGodwit system container demo report (lab \(lab))\n" + report.render())
    }

    /// Until systemd in `web` says running; "degraded" (a failed unit) is an error.
    func waitUntilRunning(_ dir: [String]) throws {
        var state = ""
        guard poll(timeout: 120, {
            state = ((try? Command.run([self.godwit, "exec"] + dir + ["web", "--", "systemctl", "is-system-running"]))?.stdout ?? "")
                .trimmingCharacters(in: .whitespacesAndNewlines)
            return state == "running" || state == "degraded"
        }), state == "running" else {
            throw GodwitError("the Debian container did not boot to running (systemd says '\(state)')")
        }
    }

    func containerAddress(_ dir: [String]) throws -> String {
        let json = try step(["list", "--format", "json"] + dir, quiet: true)
        let list = try APICoding.decoder().decode([ContainerInfo].self, from: Data(json.utf8))
        guard let ip = list.first(where: { $0.name == "web" })?.ipv4 else { throw GodwitError("the container has no address") }
        return ip
    }
}
