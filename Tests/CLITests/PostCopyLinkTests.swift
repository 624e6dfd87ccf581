import API
import Foundation
import GodwitCore
import Testing

/// The link between two lab hosts goes down after a post-copy commit (h2's port on the
/// lab's fabric, `ip link set h2 down` in the fabric namespace), long enough for both
/// daemons' TCP to give up on the page channel (15 s of unacknowledged data). Within the
/// grace period the source reconnects and the move completes; past it the container is
/// lost on both hosts and nothing is left.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct PostCopyLinkTests {
    let rollback = MoveRollbackTests()

    /// Brings h2's fabric port down; `up()` (also from a defer) brings it back once.
    final class LinkCut: @unchecked Sendable {
        let netns: String
        private var down = false
        init(_ lab: MoveLab, host: String) throws {
            netns = "/run/netns/godwit-\(lab.name)-fabric"
            let result = try Command.run(["nsenter", "--net=" + netns, "ip", "link", "set", host, "down"])
            try #require(result.succeeded, "ip link set \(host) down: \(result.stderr)")
            down = true
            self.host = host
        }
        let host: String
        func up() {
            guard down else { return }
            down = false
            _ = try? Command.run(["nsenter", "--net=" + netns, "ip", "link", "set", host, "up"])
        }
        deinit { up() }
    }

    /// Waits until h2 runs the container with pages still pending (committed on both sides).
    func waitForTheCommit(_ lab: MoveLab) throws {
        let pending = lab.stateDirectory("h2") + "/containers/web/pages-pending"
        try #require(waitUntil(60) {
            FileManager.default.fileExists(atPath: pending) && (try? lab.container("h2", "web"))??.status == .running
        }, "the move never committed")
        Thread.sleep(forTimeInterval: 0.5)
    }

    /// CRIU processes of this lab (their -D directories are under its state root).
    func criuProcesses(_ lab: MoveLab) -> [String] {
        let pids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc"))?.filter { Int($0) != nil } ?? []
        return pids.compactMap { pid -> String? in
            guard let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline") else { return nil }
            let line = String(decoding: bytes.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
            return line.contains("criu") && line.contains(lab.stateRoot) ? "\(pid): \(line)" : nil
        }
    }

    @Test func aLinkDownAfterThePostCopyCommitThatComesBackWithinTheGraceStillMoves() throws {
        // 64 MiB at 20 Mbit/s: about 25 s of pages after the commit, for the cut to land in.
        let lab = try MoveLab(bandwidth: "20mbit")
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 64, tcp: false)
        defer { workload.stop() }
        try #require(try lab.on("h1", ["config", "set"], ["web", "migration.postcopy.grace", "120"]).succeeded)
        let (move, errors) = try rollback.startMove(lab, ["web", "h2:", "--mode", "post-copy"])
        try waitForTheCommit(lab)
        let cut = try LinkCut(lab, host: "h2")
        defer { cut.up() }
        Thread.sleep(forTimeInterval: 20)
        cut.up()
        move.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        print("move said:\n" + stderr.split(separator: "\n").filter { $0.contains("link") || $0.contains("error") }.suffix(4).joined(separator: "\n"))
        #expect(move.terminationStatus == 0, "the move failed: \(stderr)")
        #expect(stderr.contains("waiting for the link"), "\(stderr)")
        #expect(stderr.contains("is back (reconnect"), "the page channel was reconnected, not merely resumed by TCP: \(stderr)")
        let info = try #require(try lab.container("h2", "web"))
        #expect(info.status == .running)
        try workload.expectHealthy(on: "h2")
        #expect(try lab.container("h1", "web") == nil || lab.processes("h1", "web").isEmpty, "the source never runs it again")
        #expect(waitUntil(30) { criuProcesses(lab).isEmpty }, "CRIU left: \(criuProcesses(lab))")
    }

    @Test func aLinkDownPastTheGraceLosesTheContainerOnBothHostsAndLeavesNothing() throws {
        let lab = try MoveLab(bandwidth: "20mbit")
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 64, tcp: false)
        defer { workload.stop() }
        try #require(try lab.on("h1", ["config", "set"], ["web", "migration.postcopy.grace", "3"]).succeeded)
        let (move, errors) = try rollback.startMove(lab, ["web", "h2:", "--mode", "post-copy"])
        try waitForTheCommit(lab)
        let cut = try LinkCut(lab, host: "h2")
        defer { cut.up() }
        move.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        print("move said:\n" + stderr.split(separator: "\n").suffix(3).joined(separator: "\n"))
        #expect(move.terminationStatus != 0, "the move can't have succeeded")
        #expect(stderr.contains("lost") && stderr.contains("stayed down for more than 3 s"), "\(stderr)")
        // The destination gives up on its own (its grace runs from when it saw the break).
        #expect(waitUntil(60) { (try? lab.container("h2", "web"))??.status == .stopped }, "h2 still runs it")
        #expect(lab.processes("h2", "web").isEmpty, "a copy runs on h2")
        #expect(try lab.container("h1", "web") == nil || lab.processes("h1", "web").isEmpty, "a copy runs on h1")
        #expect(waitUntil(30) { criuProcesses(lab).isEmpty }, "CRIU left: \(criuProcesses(lab))")
        cut.up()
    }
}
