import API
import Foundation
import GodwitCore
import Testing

/// A destination daemon that dies once it restored the container: its successor finishes
/// the move from the journal instead of removing a half-created container.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct DestinationRestartTests {
    /// The source has doomed its tasks and is about to commit when the destination's daemon
    /// dies: the restored copy is the only one left. The restarted daemon holds it, stopped,
    /// and the source's retried commit runs it there: moved, memory intact, one copy.
    @Test func aDestinationDaemonKilledAtTheCommitRunsTheContainerAfterItsRestart() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 32, tcp: false)
        defer { workload.stop() }
        // The source stops for a while right after dooming its tasks, before the commit.
        let sourceArgv = try lab.killDaemon("h1")
        try lab.startDaemon("h1", argv: ["env", "GODWIT_FAULT=pause:committing:15"] + sourceArgv)
        let (move, errors) = try MoveRollbackTests().startMove(lab, ["web", "h2:", "--mode", "stop-and-copy"])
        defer { if move.isRunning { move.terminate() } }
        let sourceJournal = lab.stateDirectory("h1") + "/containers/web/move-journal.json"
        let destinationJournal = lab.stateDirectory("h2") + "/containers/web/move-in-journal.json"
        try #require(waitUntil(60) {
            HostEnvironment.read(sourceJournal)?.contains("doomed") == true
        }, "the source never reached its commit")
        #expect(HostEnvironment.read(destinationJournal)?.contains("restored") == true, "the destination journaled its restore")
        let argv = try lab.killDaemon("h2")
        try lab.startDaemon("h2", argv: argv)
        // Held for the source's commit: still stopped, not removed.
        let held = try #require(try lab.container("h2", "web"), "the restarted destination removed the restored container")
        #expect(held.status != .running)
        move.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(move.terminationStatus == 0, "\(stderr)")
        let info = try #require(try lab.container("h2", "web"))
        #expect(info.status == .running)
        try workload.expectHealthy(on: "h2")
        #expect(waitUntil(30) { (try? lab.container("h1", "web")) == nil }, "the source kept its row")
        #expect(lab.processes("h1", "web").isEmpty, "the source's tasks survived")
        #expect(!FileManager.default.fileExists(atPath: destinationJournal), "the destination's journal outlived the move")
    }

    /// The destination's daemon dies after the restore, before any commit: the source rolls
    /// back (its page session broke) and the restarted destination, told nothing, must never
    /// run its stale copy; the source's abort or its silence removes it.
    @Test func aDestinationDaemonKilledBeforeTheCommitNeverRunsItsCopy() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 32, tcp: false)
        defer { workload.stop() }
        let sourceArgv = try lab.killDaemon("h1")
        try lab.startDaemon("h1", argv: ["env", "GODWIT_FAULT=pause:beforeCommit:10"] + sourceArgv)
        let (move, errors) = try MoveRollbackTests().startMove(lab, ["web", "h2:", "--mode", "stop-and-copy"])
        defer { if move.isRunning { move.terminate() } }
        let destinationJournal = lab.stateDirectory("h2") + "/containers/web/move-in-journal.json"
        try #require(waitUntil(60) {
            HostEnvironment.read(destinationJournal)?.contains("restored") == true
        }, "the destination never restored")
        let argv = try lab.killDaemon("h2")
        try lab.startDaemon("h2", argv: argv)
        move.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(move.terminationStatus != 0, "the move can't succeed: its page session broke before the commit")
        #expect(stderr.contains("rolled back"), "\(stderr)")
        let info = try #require(try lab.container("h1", "web"))
        #expect(info.status == .running)
        try workload.expectHealthy(on: "h1")
        // The source's rollback reached the restarted destination (abort), or will by silence:
        // either way its copy never ran.
        let copy = try lab.container("h2", "web")
        #expect(copy == nil || copy?.status != .running, "the destination runs a second copy")
        #expect(waitUntil(30) { (try? lab.container("h2", "web")) == nil }, "the destination kept its stale copy")
        #expect(lab.processes("h2", "web").isEmpty)
    }
}
