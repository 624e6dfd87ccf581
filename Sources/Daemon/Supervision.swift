import API
import Foundation
import GodwitCore
import Synchronization

extension ContainerService {
    /// At daemon start: containers recorded as running whose init is still the same process
    /// are adopted as they are; the others are marked stopped. Launches that the previous
    /// daemon left half-done are removed, except those in `keeping` (incoming moves taken
    /// over from their journal, see MoveRecovery.incoming).
    public func adopt(keeping: Set<String> = []) async throws -> (adopted: [String], stopped: [String], removed: [String]) {
        var adopted: [String] = [], stopped: [String] = [], removed: [String] = []
        for record in try store.containers() where !keeping.contains(record.name) {
            let spec = self.spec(record)
            switch record.status {
            case .creating:
                try? await driver.destroy(spec)
                try? FileManager.default.removeItem(at: spec.directory)
                try store.deleteContainer(record.name)
                events.log("warning", "removed container \(record.name): its launch was interrupted by a daemon restart")
                removed.append(record.name)
            case .running, .frozen:
                if let initProcess = record.initProcess, driver.isAlive(spec, init: initProcess) {
                    adopted.append(record.name)
                } else {
                    markStopped(record.name, ifStill: record.initProcess, reason: "its init exited while godwitd was not running")
                    stopped.append(record.name)
                }
            case .stopped:
                break
            }
        }
        return (adopted, stopped, removed)
    }

    /// The watchdog's pass: a container whose init died (crash, `kill`, shutdown from
    /// inside) becomes Stopped. Busy containers are skipped: their operation decides.
    public func checkLiveness() {
        guard let records = try? store.containers() else { return }
        for record in records where record.status.hasProcess && !isBusy(record.name) {
            guard let initProcess = record.initProcess else { continue }
            if !driver.isAlive(spec(record), init: initProcess) {
                markStopped(record.name, ifStill: initProcess, reason: "its init process \(initProcess.pid) exited")
            }
        }
    }

    /// Only if the record still names the init that was found dead: an operation may have
    /// started a new one since the record was read.
    func markStopped(_ name: String, ifStill initProcess: ProcessIdentity?, reason: String) {
        var changed = false
        _ = try? store.updateContainer(name) {
            guard $0.status.hasProcess, $0.initProcess == initProcess else { return }
            $0.status = .stopped
            $0.initProcess = nil
            changed = true
        }
        if changed { events.lifecycle("container-stopped", container: name, context: ["reason": reason]) }
    }
}

/// As child subreaper, the daemon inherits the orphaned processes of everything it started
/// (container inits after godwit-spawn exits, CRIU's restored trees) and must reap them.
/// Foundation's Process reaps its own children by pid, so a blanket waitpid(-1) could steal
/// their exit status: this reaps only zombies that stayed unreaped for a whole interval.
///
/// Concurrency model: the supervisor calls `reap` once a second from its one task. `seen`
/// (the zombies of the last pass) is behind a Mutex held for the whole pass, so that
/// passes, should two ever overlap, run one after the other; a pass does not block (a
/// /proc scan and waitpid with WNOHANG).
public final class ChildReaper: Sendable {
    private let seen = Mutex<Set<Int32>>([])

    public init() {}

    /// Makes this process the subreaper for its descendants.
    public static func becomeSubreaper() throws {
        // prctl(2) is variadic in C, so Swift doesn't import it; every argument here is an
        // integer register, which a fixed-arity call passes the same way.
        typealias Prctl = @convention(c) (Int32, UInt, UInt, UInt, UInt) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "prctl") else {
            throw GodwitError("prctl not found in libc")
        }
        let prctl = unsafeBitCast(symbol, to: Prctl.self)
        let PR_SET_CHILD_SUBREAPER: Int32 = 36
        if prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 { throw GodwitError.errno("prctl(PR_SET_CHILD_SUBREAPER)") }
    }

    /// One pass; returns the pids it reaped.
    @discardableResult
    public func reap() -> [Int32] {
        seen.withLock { seen in
            let me = getpid()
            var zombies: Set<Int32> = []
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
            for entry in entries {
                guard let pid = Int32(entry), let fields = HostEnvironment.procStatFields("/proc/\(pid)/stat") else { continue }
                guard fields.count > 2, fields[0] == "Z", Int32(fields[1]) == me else { continue }
                zombies.insert(pid)
            }
            var reaped: [Int32] = []
            for pid in zombies where seen.contains(pid) {
                var status: Int32 = 0
                if waitpid(pid, &status, WNOHANG) == pid { reaped.append(pid) }
            }
            seen = zombies.subtracting(reaped)
            return reaped
        }
    }
}
