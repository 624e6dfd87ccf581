import API
import Foundation
import GodwitCore
import Synchronization

/// A ContainerDriver that simulates containers in memory, for tests only: godwitd selects
/// it only with the hidden `--testing-fake-driver` flag AND GODWIT_TESTING_FAKE_DRIVER=1 in
/// its environment, and reports `driver: fake` in `GET /1.0`. Its "processes" get pids above
/// any real pid_max, so they can never be mistaken for real processes.
///
/// Test hooks: `failing` makes a step throw; `delay` slows start/restore (cancellation
/// tests); a container whose config has environment.GODWIT_FAKE_FAIL=STEP fails that step
/// (lets end-to-end tests reach the failure paths through the real CLI). With a
/// `persistence` file its state survives a daemon restart, like real processes would.
///
/// Concurrency model: the daemon's tasks and the test call it concurrently. Everything
/// mutable (the simulated containers, the test hooks) is in `inner`, one Mutex; `mutate`
/// writes the persistence file while holding it, so that the file's versions land in the
/// order of the changes. Sleeps (`delay`) and console writes happen outside it.
public final class FakeDriver: ContainerDriver, Sendable {
    public let kind = "fake"

    public enum Step: String, Codable, Sendable { case create, start, stop, checkpoint, restore, destroy, reconfigure }

    struct Container: Codable {
        var created = false
        var running: ProcessIdentity?
        var frozen = false
        var config: [String: String] = [:]
    }

    struct State: Codable {
        var containers: [String: Container] = [:]
        var nextPid: Int32 = 5_000_000
        var calls: [String] = []
    }

    private struct Inner {
        var state = State()
        var failing: Set<Step> = []
        var delay: Duration = .zero
    }

    private let inner: Mutex<Inner>
    private let persistence: URL?
    /// Steps that throw instead of acting.
    public var failing: Set<Step> {
        get { inner.withLock { $0.failing } }
        set { inner.withLock { $0.failing = newValue } }
    }
    /// How long start and restore take.
    public var delay: Duration {
        get { inner.withLock { $0.delay } }
        set { inner.withLock { $0.delay = newValue } }
    }

    public init(persistence: URL? = nil) {
        self.persistence = persistence
        var state = State()
        if let persistence, let data = try? Data(contentsOf: persistence),
           let loaded = try? JSONDecoder().decode(State.self, from: data) {
            state = loaded
        }
        inner = Mutex(Inner(state: state))
    }

    /// "create c1", "start c1"...: what the daemon asked, in order.
    public var calls: [String] { locked { $0.calls } }
    public func isCreated(_ name: String) -> Bool { locked { $0.containers[name]?.created == true } }
    public func process(_ name: String) -> ProcessIdentity? { locked { $0.containers[name]?.running } }
    public func config(_ name: String) -> [String: String]? { locked { $0.containers[name]?.config } }

    /// Simulates the init dying on its own (crash, `kill -9`).
    public func crash(_ name: String) { mutate { $0.containers[name]?.running = nil } }

    private func locked<T: Sendable>(_ body: (State) -> T) -> T {
        inner.withLock { body($0.state) }
    }

    @discardableResult
    private func mutate<T: Sendable>(_ body: (inout State) throws -> T) rethrows -> T {
        try inner.withLock { inner in
            let result = try body(&inner.state)
            if let persistence, let data = try? JSONEncoder().encode(inner.state) { try? data.write(to: persistence, options: .atomic) }
            return result
        }
    }

    private func step(_ step: Step, _ spec: DriverSpec) throws {
        mutate { $0.calls.append("\(step.rawValue) \(spec.name)") }
        if failing.contains(step) || spec.config.values["environment.GODWIT_FAKE_FAIL"] == step.rawValue {
            throw GodwitError("fake driver: \(step.rawValue) of '\(spec.name)' failed as the test asked")
        }
    }

    private func launchProcess(_ spec: DriverSpec, _ what: String) async throws -> ProcessIdentity {
        if delay > .zero { try await Task.sleep(for: delay) }
        try Task.checkCancellation()
        let process = mutate { state -> ProcessIdentity in
            let process = ProcessIdentity(pid: state.nextPid, startTime: UInt64(state.nextPid) * 7)
            state.nextPid += 1
            state.containers[spec.name, default: Container()].running = process
            state.containers[spec.name]?.frozen = false
            return process
        }
        let line = "fake init \(what) as pid \(process.pid)\n"
        if let handle = FileHandle(forWritingAtPath: consoleLog(spec).path) {
            _ = try? handle.seekToEnd(); handle.write(Data(line.utf8)); try? handle.close()
        } else {
            try? Data(line.utf8).write(to: consoleLog(spec))
        }
        return process
    }

    public func create(_ spec: DriverSpec) async throws {
        try step(.create, spec)
        mutate { $0.containers[spec.name] = Container(created: true, config: spec.config.values) }
    }

    public func start(_ spec: DriverSpec) async throws -> ProcessIdentity {
        try step(.start, spec)
        return try await launchProcess(spec, "started")
    }

    public func stop(_ spec: DriverSpec, init: ProcessIdentity, timeout: Duration, force: Bool) async throws {
        try step(.stop, spec)
        mutate { $0.containers[spec.name]?.running = nil }
    }

    public func freeze(_ spec: DriverSpec, init: ProcessIdentity) async throws {
        mutate { $0.containers[spec.name]?.frozen = true }
    }

    public func unfreeze(_ spec: DriverSpec, init: ProcessIdentity) async throws {
        mutate { $0.containers[spec.name]?.frozen = false }
    }

    public func checkpoint(_ spec: DriverSpec, init process: ProcessIdentity, to directory: URL) async throws {
        try step(.checkpoint, spec)
        try Data("fake checkpoint of pid \(process.pid)\n".utf8).write(to: directory.appendingPathComponent("fake.img"))
        mutate { $0.containers[spec.name]?.running = nil }
    }

    public func restore(_ spec: DriverSpec, from directory: URL) async throws -> ProcessIdentity {
        try step(.restore, spec)
        guard FileManager.default.fileExists(atPath: directory.appendingPathComponent("fake.img").path) else {
            throw GodwitError("fake driver: no checkpoint in \(directory.path)")
        }
        return try await launchProcess(spec, "restored")
    }

    public func reconfigure(_ spec: DriverSpec, init: ProcessIdentity?) async throws {
        try step(.reconfigure, spec)
        mutate { $0.containers[spec.name]?.config = spec.config.values }
    }

    /// Runs the command on the host with the given environment: enough to test that the
    /// CLI passes stdio and exit codes through. Real drivers enter the container.
    public func execPlan(_ spec: DriverSpec, init process: ProcessIdentity, command: [String],
                         environment: [String: String], terminal: Bool) throws -> ExecPlan {
        var environment = environment
        environment["PATH"] = environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        return ExecPlan(argv: command, environment: environment, pid: process.pid)
    }

    public func destroy(_ spec: DriverSpec) async throws {
        try step(.destroy, spec)
        mutate { $0.containers[spec.name] = nil }
    }

    public func checkpointCheck(_ spec: DriverSpec, init: ProcessIdentity) throws -> CheckpointCheck {
        CheckpointCheck(name: spec.name, processes: 1, blockers: [])
    }

    public func consoleLog(_ spec: DriverSpec) -> URL { spec.directory.appendingPathComponent("console.log") }

    public func isAlive(_ spec: DriverSpec, init process: ProcessIdentity) -> Bool {
        locked { $0.containers[spec.name]?.running == process }
    }
}
