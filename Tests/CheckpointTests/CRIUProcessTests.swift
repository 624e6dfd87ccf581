import Foundation
import GodwitCore
import Testing
@testable import Checkpoint

/// The status pipe without CRIU: shell scripts that behave like CRIU does on --status-fd.
@Suite struct CRIUProcessTests {
    func shell(_ script: String) throws -> CRIUProcess { try CRIUProcess(["/bin/sh", "-c", script]) }

    @Test func aByteOnTheStatusFDIsReady() throws {
        let p = try shell("sleep 0.2; printf '\\000' >&3; exec 3>&-; sleep 10")
        defer { p.kill() }
        #expect(p.waitUntilReady(timeout: 10) == .ready)
        #expect(p.isRunning)
        #expect(p.waitUntilReady(timeout: 0) == .ready, "the outcome is kept")
    }

    @Test func exitWithoutAByteIsExited() throws {
        let p = try shell("exit 3")
        #expect(p.waitUntilReady(timeout: 10) == .exited)
        #expect(p.waitForExit(timeout: 10) == 3)
        #expect(!p.isRunning)
    }

    /// A helper CRIU started may keep the write end open after CRIU died.
    @Test func exitIsSeenWhileAChildStillHoldsTheStatusFD() throws {
        let p = try shell("sleep 3 & exit 1")
        let start = Date()
        #expect(p.waitUntilReady(timeout: 10) == .exited)
        #expect(Date().timeIntervalSince(start) < 2)
    }

    @Test func silenceIsATimeoutAndNotFinal() throws {
        let p = try shell("sleep 0.6; printf x >&3; sleep 10")
        defer { p.kill() }
        #expect(p.waitUntilReady(timeout: 0.1) == .timedOut)
        #expect(p.waitUntilReady(timeout: 10) == .ready)
    }

    @Test func killReapsWithTheSignal() throws {
        let p = try shell("sleep 30")
        p.kill()
        #expect(p.exitStatus == 128 + SIGKILL)
        #expect(p.waitForExit(timeout: 0) == 128 + SIGKILL)
    }

    /// CRIU would see any other inherited descriptor as an external file.
    @Test func onlyStdioAndTheStatusFDAreInherited() throws {
        var leaky: [Int32] = [-1, -1]
        #expect(pipe(&leaky) == 0)  // no close-on-exec: a careless descriptor elsewhere
        defer { close(leaky[0]); close(leaky[1]) }
        let p = try CRIUProcess(["sleep", "10"])
        defer { p.kill() }
        // posix_spawn returns once the exec began; the child's startup may still hold a file
        // of its own for a moment (seen: fd 4 on a locale file while `sleep` called
        // setlocale). An inherited descriptor stays: wait for the set to settle.
        var fds: Set<String> = []
        let settled = poll(timeout: 5) {
            fds = Set((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(p.pid)/fd")) ?? [])
            return fds == ["0", "1", "2", "3"]
        }
        #expect(settled, "the child holds \(fds.sorted())")
        #expect((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(p.pid)/fd/0")) == "/dev/null")
    }
}
