import API
import Foundation
import GodwitCore
import Testing

/// A web server under connection load moves h1 → h2 → h1 in every mode, and not one request
/// fails. Clients open a new connection per request, so connections are always being set
/// up when CRIU freezes the server; before `--skip-in-flight` every such dump failed
/// ("inet: In-flight connection"), and with it alone the connections CRIU skipped hung
/// their clients (see ListenQueueDrain). Each restore also keeps the rootfs nosuid,nodev.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct BusyServerMoveTests {
    static let modes = ["stop-and-copy", "pre-copy", "post-copy", "hybrid"]
    static let page = "Godwit busy-server test page\n"

    struct Move {
        var mode: String
        var start: Double
        var end: Double
        var frozenMillis: Double?
    }

    @Test func aServerUnderConnectionLoadMovesInEveryModeWithoutAFailedRequest() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        try #require(try lab.on("h1", ["launch"], ["busybox", "web"]).succeeded)
        let started = try lab.sh("h1", "web", """
            mkdir -p /www && printf '\(Self.page)' > /www/index.html && \
            (busybox httpd -f -p 80 -h /www </dev/null >/dev/null 2>&1 &)
            """)
        try #require(started.succeeded, "httpd: \(started.stderr)")
        let ip = try #require(try lab.container("h1", "web")?.ipv4)
        let url = "http://\(ip)/index.html"
        try #require(waitUntil {
            (try? Command.run(["nsenter", "--net=" + lab.clientNetnsPath, "curl", "-s", "--max-time", "2", url]).stdout) == Self.page
        }, "the client never got the page from \(url)")

        // 16 clients keep connections arriving faster than one freeze lasts. A generous
        // timeout: a SYN dropped while the server is frozen is sent again after 1 s, 3 s, 7 s.
        let load = try HTTPLoad(netnsPath: lab.clientNetnsPath, url: url, workers: 16, requestsPerWorker: 5000,
                                seconds: 600, maxTime: 30)
        defer { load.remove() }
        func served(after time: Double) -> Int {
            load.requests().filter { $0.start > time && $0.curlExit == 0 }.count
        }
        try #require(waitUntil { served(after: 0) >= 100 }, "the load never got going")

        var moves: [Move] = []
        for mode in Self.modes {
            for (from, to) in [("h1", "h2"), ("h2", "h1")] {
                let start = Date().timeIntervalSince1970
                let result = try lab.on(from, ["move"], ["web", "\(to):", "--mode", mode, "--format", "json"])
                let end = Date().timeIntervalSince1970
                try #require(result.succeeded, "move \(from) -> \(to) (\(mode)) under load failed: \(result.stderr)")
                let report = try APICoding.decoder().decode(MoveReport.self, from: Data(result.stdout.utf8))
                #expect(report.outcome == "moved")
                #expect(try lab.container(to, "web")?.status == .running)
                #expect(try lab.container(to, "web")?.ipv4 == ip, "the address changed")
                moves.append(Move(mode: mode, start: start, end: end, frozenMillis: report.frozenMillis))
                // CRIU restored into a nosuid,nodev overlay, and the container's / kept both.
                let rootfs = lab.stateDirectory(to) + "/containers/web/rootfs"
                let host = StatePermissionsTests.mountOptions(at: rootfs, in: HostEnvironment.read("/proc/self/mountinfo") ?? "")
                let inside = StatePermissionsTests.mountOptions(at: "/", in: try lab.sh(to, "web", "cat /proc/self/mountinfo").stdout)
                for options in [host, inside] {
                    #expect(options.map { $0.contains("nosuid") && $0.contains("nodev") } == true, "rootfs on \(to): \(options ?? [])")
                }
                // The destination serves new connections before the next move freezes it.
                #expect(waitUntil(30) { served(after: end) >= 50 }, "no requests served on \(to) after the \(mode) move")
            }
        }
        load.stop()
        #expect(!load.isRunning, "the client loop did not stop")

        let requests = load.requests()
        let failed = requests.filter { !succeeded($0) }
        for (i, mode) in Self.modes.enumerated() {
            // A mode's window: from its first move until the next mode's first move.
            let from = moves[2 * i].start
            let to = i + 1 < Self.modes.count ? moves[2 * (i + 1)].start : .infinity
            let inMode = requests.filter { $0.start >= from && $0.start < to }
            let longest = inMode.max { $0.totalSeconds < $1.totalSeconds }
            let frozen = moves[(2 * i)...(2 * i + 1)].map { String(format: "%.0f", $0.frozenMillis ?? -1) }
            print(String(format: "busy server, %@: %d requests, %d failed, longest %.2f s (connect %.2f s); frozen %@ ms",
                         mode, inMode.count, inMode.filter { !succeeded($0) }.count, longest?.totalSeconds ?? 0,
                         longest?.connectSeconds ?? 0, frozen.joined(separator: " and ")))
            #expect(inMode.count >= 100, "only \(inMode.count) requests during the \(mode) moves")
            // Proof the load met the freeze: connection attempts that had to wait for it.
            #expect(inMode.contains { $0.connectSeconds >= 0.9 }, "no connection attempt met a \(mode) freeze")
        }
        print("busy server, all modes: \(requests.count) requests, \(failed.count) failed")
        #expect(failed.isEmpty, """
            \(failed.count) of \(requests.count) requests failed; the first ones (start, curl exit, HTTP code, bytes, \
            connect s, total s): \(failed.prefix(10).map { "\($0.start) \($0.curlExit) \($0.httpCode) \($0.bytes) \($0.connectSeconds) \($0.totalSeconds)" }); \
            moves: \(moves.map { "\($0.mode) \($0.start)-\($0.end)" })
            """)
    }

    func succeeded(_ r: HTTPLoad.Request) -> Bool {
        r.curlExit == 0 && r.httpCode == 200 && r.bytes == Self.page.utf8.count
    }
}
