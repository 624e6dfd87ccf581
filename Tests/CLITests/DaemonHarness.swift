import Foundation
import GodwitCore

/// The built executables: `swift test` runs the test bundle from the build directory,
/// next to godwit and godwitd.
enum Built {
    static var directory: URL {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent()
    }
    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
}

/// A unique state directory, removed with the object.
final class StateDir {
    let url: URL
    init() throws {
        // Short paths: unix socket paths are limited to 107 bytes.
        url = URL(fileURLWithPath: "/tmp").appendingPathComponent("gw-e2e-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
    var path: String { url.path }
}

/// A real godwitd process on a temp state dir with the fake driver (selected by the hidden
/// flag plus its environment variable). Killed on `stop()` or, failing that, on deinit.
final class DaemonProcess {
    let state: StateDir
    let process = Process()
    let log: URL

    init(state: StateDir, extraArguments: [String] = [], waitForSocket: Bool = true) throws {
        self.state = state
        log = state.url.appendingPathComponent("godwitd-\(UUID().uuidString.prefix(4)).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        let output = try FileHandle(forWritingTo: log)
        process.executableURL = URL(fileURLWithPath: Built.path("godwitd"))
        process.arguments = ["--state-dir", state.path, "--name", "e2e-host",
                             "--testing-fake-driver", state.url.appendingPathComponent("fake-driver.json").path] + extraArguments
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_TESTING_FAKE_DRIVER"] = "1"
        process.environment = environment
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        if waitForSocket { try waitUntilReady() }
    }

    var socket: String { state.url.appendingPathComponent("unix.socket").path }
    var logText: String { (try? String(contentsOf: log, encoding: .utf8)) ?? "" }

    /// Ready = the CLI gets an answer (the socket file alone may exist before listening).
    func waitUntilReady() throws {
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            guard process.isRunning else { throw GodwitError("godwitd exited early:\n\(logText)") }
            if FileManager.default.fileExists(atPath: socket),
               (try? godwit(["info"], dir: state.path).status) == 0 { return }
            usleep(100_000)
        }
        throw GodwitError("godwitd did not become ready in 30 s:\n\(logText)")
    }

    /// SIGTERM (the clean shutdown), then SIGKILL if it hangs; returns the exit status.
    @discardableResult
    func stop(timeout: TimeInterval = 15) -> Int32 {
        guard process.isRunning else { return process.terminationStatus }
        kill(process.processIdentifier, SIGTERM)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            return -1
        }
        return process.terminationStatus
    }

    func waitForExit(timeout: TimeInterval = 15) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(50_000) }
        return process.isRunning ? nil : process.terminationStatus
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}

/// Runs the real CLI against a state directory.
func godwit(_ arguments: [String], dir: String) throws -> CommandResult {
    var environment = ProcessInfo.processInfo.environment
    environment["GODWIT_DIR"] = dir
    return try Command.run([Built.path("godwit")] + arguments, environment: environment)
}
