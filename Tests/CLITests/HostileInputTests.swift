import API
import Foundation
import GodwitCore
import Testing

/// Numbers that used to kill godwitd with a Swift trap (issue 13, item 5), through the real
/// CLI and a real daemon: each gets a clear error and a non-zero exit, and the daemon still
/// answers afterwards.
@Suite(.serialized) struct HostileInputTests {
    @Test func hugeNumbersFailCleanlyAndTheDaemonLivesOn() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state, extraArguments: ["--bridge", "br0", "--subnet", "10.77.1.0/24"])
        defer { daemon.stop() }
        let dir = state.path
        let launch = try godwit(["launch", "busybox", "c1"], dir: dir)
        #expect(launch.status == 0, "\(launch.stderr)\n\(daemon.logText)")

        // ConfigSchema: UInt64(1e20 * 2^30) trapped.
        let memory = try godwit(["config", "set", "c1", "limits.memory", "1e20GiB"], dir: dir)
        #expect(memory.status != 0)
        #expect(memory.stderr.contains("error: invalid value '1e20GiB' for limits.memory: expected a size of at most 9223372036854775807 bytes"),
                "\(memory.stderr)")
        #expect(memory.stderr.contains("hint: memory limit"), "\(memory.stderr)")
        let cpu = try godwit(["config", "set", "c1", "limits.cpu", "nan"], dir: dir)
        #expect(cpu.status != 0 && cpu.stderr.contains("error: invalid value 'nan' for limits.cpu"), "\(cpu.stderr)")

        // Routes: Int64(1e17 * 1000) trapped.
        let operations = try godwit(["operation", "list", "--format", "json"], dir: dir)
        let id = try #require(try APICoding.decoder().decode([OperationInfo].self, from: Data(operations.stdout.utf8)).first?.id)
        let wait = try godwit(["operation", "wait", "--timeout", "1e17", id], dir: dir)
        #expect(wait.status != 0)
        #expect(wait.stderr.contains("error: invalid timeout '1e+17': more than 2592000 s (30 days)"), "\(wait.stderr)")
        #expect(wait.stderr.contains("hint: give seconds from 0 to 2592000, or -1"), "\(wait.stderr)")
        let nan = try godwit(["operation", "wait", "--timeout", "nan", id], dir: dir)
        #expect(nan.status != 0 && nan.stderr.contains("error: invalid timeout 'nan': not a finite number"), "\(nan.stderr)")
        let stop = try godwit(["stop", "--timeout", "9223372036854775807", "c1"], dir: dir)
        #expect(stop.status != 0 && stop.stderr.contains("error: invalid timeout '9223372036854775807'"), "\(stop.stderr)")

        // Still alive, still serving, nothing changed.
        #expect(daemon.process.isRunning, "\(daemon.logText)")
        let list = try godwit(["list"], dir: dir)
        #expect(list.status == 0, "\(list.stderr)\n\(daemon.logText)")
        #expect(list.stdout.split(separator: "\n").contains { $0.hasPrefix("c1 ") && $0.contains("RUNNING") }, "\(list.stdout)")
        // Only what the daemon set at launch (the id map's base): none of the refused values.
        let shown = try godwit(["config", "show", "c1"], dir: dir).stdout.split(separator: "\n")
        #expect(shown.count == 1 && shown[0].hasPrefix("volatile.idmap.base: "), "\(shown)")
        let fine = try godwit(["operation", "wait", "--timeout", "5", id], dir: dir)
        #expect(fine.status == 0, "\(fine.stderr)")
        #expect(try godwit(["delete", "--force", "c1"], dir: dir).status == 0)
    }
}
