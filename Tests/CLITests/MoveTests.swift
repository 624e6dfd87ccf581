import API
import Foundation
import GodwitCore
import Testing

/// `godwit move` between two real lab hosts: real daemons with mutual TLS, real CRIU, the
/// container's veth re-created on the other host's bridge. Small memory to stay fast.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct MoveTests {
    /// A container with a counter, a memory writer and a TCP server, plus a client in the
    /// lab's client namespace connected to it.
    final class Workload {
        let lab: MoveLab
        let name: String
        var host: String
        var client: NetcatClient?
        var sentLines: [String] = []
        var memtouchPID = ""

        let tcp: Bool

        init(lab: MoveLab, name: String, host: String, memoryMiB: Int, tcp: Bool = true) throws {
            self.tcp = tcp
            self.lab = lab; self.name = name; self.host = host
            let launch = try lab.on(host, ["launch"], ["busybox", name])
            try #require(launch.succeeded, "launch failed: \(launch.stderr)")
            _ = try lab.sh(host, name, "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.1; done </dev/null >/dev/null 2>&1 &")
            _ = try lab.sh(host, name, "memtouch --size \(memoryMiB) --stride 4 --report /tmp/mt.json </dev/null >/dev/null 2>&1 &")
            _ = try lab.sh(host, name, "(sleep 100000 | nc -l -p 5000 > /tmp/received) </dev/null >/dev/null 2>&1 &")
            try #require(waitUntil { (try? self.report())??["ready"] as? Bool == true }, "memtouch never got ready")
            memtouchPID = try lab.sh(host, name, "pidof memtouch").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            guard tcp else { return }
            let ip = try #require(try lab.container(host, name)?.ipv4)
            client = try NetcatClient(netnsPath: lab.clientNetnsPath, ip: ip, port: 5000)
            try send("line-0")
        }

        func stop() { client?.stop() }

        func counter() -> Int? {
            Int((try? lab.sh(host, name, "cat /tmp/counter").stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? "")
        }

        func report() throws -> [String: Any]? {
            let text = try lab.sh(host, name, "cat /tmp/mt.json").stdout
            return try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any]
        }

        /// One more line over the same TCP connection; the server must have all lines so far.
        func send(_ line: String) throws {
            guard tcp else { return }
            sentLines.append(line)
            try client?.send(line)
            let expected = sentLines.map { $0 + "\n" }.joined()
            #expect(waitUntil { (try? self.lab.sh(self.host, self.name, "cat /tmp/received").stdout) == expected },
                    "the server in \(name) on \(host) did not receive \(sentLines) over the same connection")
            #expect(client?.isConnected == true, "the client's TCP connection broke")
        }

        /// After a move: the same processes carry on, memory verifies, TCP works.
        func expectHealthy(on host: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
            self.host = host
            let before = try #require(counter(), "no counter on \(host)", sourceLocation: sourceLocation)
            #expect(waitUntil { (self.counter() ?? 0) > before + 2 }, "the counter stopped at \(before)", sourceLocation: sourceLocation)
            #expect(try lab.sh(host, name, "pidof memtouch").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == memtouchPID,
                    "memtouch is not the same process", sourceLocation: sourceLocation)
            func verification(_ r: [String: Any]?) -> [String: Any] { r?["verification"] as? [String: Any] ?? [:] }
            let runsBefore = verification(try report())["runs"] as? Int ?? 0
            _ = try lab.sh(host, name, "kill -USR1 \(memtouchPID)")
            #expect(waitUntil { (verification(try? self.report())["runs"] as? Int ?? 0) > runsBefore },
                    "memtouch did not verify", sourceLocation: sourceLocation)
            let v = verification(try report())
            #expect(v["verdict"] as? String == "pass" && v["bad_pages"] as? Int == 0,
                    "memtouch's memory does not verify: \(v)", sourceLocation: sourceLocation)
            try send("line-\(sentLines.count)")
        }
    }

    func move(_ lab: MoveLab, _ name: String, from: String, to: String, mode: String) throws -> MoveReport {
        let result = try lab.on(from, ["move"], [name, "\(to):", "--mode", mode, "--format", "json"])
        try #require(result.succeeded, "move \(from) -> \(to) (\(mode)) failed: \(result.stderr)")
        return try APICoding.decoder().decode(MoveReport.self, from: Data(result.stdout.utf8))
    }

    @Test func movesThereAndBackInEachModeKeepingMemoryCounterAndTCP() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try Workload(lab: lab, name: "web", host: "h1", memoryMiB: 64)
        defer { workload.stop() }
        let ip = try #require(try lab.container("h1", "web")?.ipv4)
        for mode in ["stop-and-copy", "post-copy"] {
            for (from, to) in [("h1", "h2"), ("h2", "h1")] {
                let report = try move(lab, "web", from: from, to: to, mode: mode)
                #expect(report.outcome == "moved")
                #expect(report.mode.rawValue == mode)
                #expect((report.frozenMillis ?? 0) > 0 && (report.frozenMillis ?? 0) < report.totalMillis)
                #expect(report.totalBytes > 64 << 20 / 2, "\(report.totalBytes) bytes for 64 MiB of memory")
                if mode == "post-copy" { #expect(report.allLocalMillis != nil) }
                #expect(try lab.container(from, "web") == nil, "web is still listed on \(from)")
                let moved = try #require(try lab.container(to, "web"), "web is not listed on \(to)")
                #expect(moved.status == .running)
                #expect(moved.ipv4 == ip, "the address changed")
                #expect(lab.processes(from, "web").isEmpty, "processes left on \(from)")
                #expect(lab.mounts(from, "web").isEmpty, "mounts left on \(from)")
                try workload.expectHealthy(on: to)
            }
        }
        // Both hosts keep the history; info shows the last move.
        let info = try lab.on("h1", ["info"], ["web"])
        #expect(info.stdout.contains("post-copy"), "info lacks the last move: \(info.stdout)")
    }

    /// `--bandwidth` from the CLI through both daemons: the flag wins over the key, the page
    /// transfer keeps to the cap (64 MiB at 200 Mbit/s: at least 2.7 s), memory verifies.
    @Test func aCappedMoveKeepsToItsRate() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try Workload(lab: lab, name: "slow", host: "h1", memoryMiB: 64, tcp: false)
        defer { workload.stop() }
        #expect(try lab.on("h1", ["config", "set"], ["slow", "migration.bandwidth", "1gbit"]).succeeded)
        let result = try lab.on("h1", ["move"], ["slow", "h2:", "--mode", "stop-and-copy", "--bandwidth", "200mbit", "--format", "json"])
        try #require(result.succeeded, "capped move failed: \(result.stderr)")
        let report = try APICoding.decoder().decode(MoveReport.self, from: Data(result.stdout.utf8))
        #expect(report.outcome == "moved")
        #expect(report.memory?.bandwidthLimit == "200mbit" && report.memory?.bandwidthLimitSource == "--bandwidth")
        let pages = try #require(report.phases.first { $0.name == "memory + restore" })
        #expect(pages.bytes > 60 << 20, "\(pages.bytes) bytes of pages")
        let rate = Double(pages.bytes) / (pages.millis / 1000)
        #expect(rate < 25e6 * 1.15, "pages at \(rate / 1e6) MB/s, cap 25")
        try workload.expectHealthy(on: "h2")
    }

    @Test func autoPicksAStrategyBothHostsSupportAndSaysWhy() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        #expect(try lab.on("h1", ["launch"], ["busybox", "small"]).succeeded)
        // Safe by default: a mode that can't lose the container.
        var report = try move(lab, "small", from: "h1", to: "h2", mode: "auto")
        #expect(report.mode == .stopAndCopy)
        #expect(report.modeReason.contains("auto") && report.modeReason.contains("migration.postcopy=true"), "\(report.modeReason)")
        // The container's owner accepts post-copy's risk: auto picks it.
        #expect(try lab.on("h2", ["config", "set"], ["small", "migration.postcopy", "true"]).succeeded)
        report = try move(lab, "small", from: "h2", to: "h1", mode: "auto")
        #expect(report.mode == .postCopy)
        #expect(report.modeReason.contains("auto"))
    }

    @Test func aHostThatDoesNotTrustUsRefusesAndTheContainerStays() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        #expect(try lab.on("h1", ["launch"], ["busybox", "c1"]).succeeded)
        #expect(try lab.on("h2", ["trust", "remove"], ["h1"]).succeeded)
        let result = try lab.on("h1", ["move"], ["c1", "h2:"])
        #expect(!result.succeeded)
        #expect(result.stderr.contains("not trusted") || result.stderr.contains("403"), "\(result.stderr)")
        #expect(try lab.container("h1", "c1")?.status == .running)
        #expect(try lab.container("h2", "c1") == nil)
    }

    @Test func badMovesAreRefusedClearly() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        #expect(try lab.on("h1", ["launch"], ["busybox", "c1"]).succeeded)
        #expect(try lab.on("h2", ["launch"], ["busybox", "c1"]).succeeded)
        let cases: [([String], String)] = [
            (["c1", "nowhere:"], "unknown remote"),
            (["c1", "h2"], "REMOTE:"),
            (["nope", "h2:"], "nope"),
            (["c1", "h2:"], "already exists"),
            (["c1", "h2:Bad_Name"], "name"),
            (["c1", "h2:", "--bandwidth", "fast"], "invalid rate"),
            (["c1", "h2:", "--bandwidth", "100kbit"], "below 1mbit"),
        ]
        for (arguments, words) in cases {
            let result = try lab.on("h1", ["move"], arguments)
            #expect(!result.succeeded, "move \(arguments) succeeded")
            #expect(result.stderr.contains(words), "move \(arguments): \(result.stderr)")
        }
        #expect(try lab.container("h1", "c1")?.status == .running)
        #expect(try lab.containers("h2").map(\.name) == ["c1"])
    }
}
