import API
import Foundation
import GodwitCore

extension ContainerService {
    /// `PUT /1.0/containers/{name}/state`. Wrong-state requests fail before any operation
    /// exists, so the client gets a 400 it can print instead of a failed operation.
    public func changeState(_ name: String, _ put: ContainerStatePut) throws -> OperationInfo {
        let record = try record(name)
        func wrongState(_ hint: String) -> RequestError {
            .badRequest(GodwitError("container '\(name)' is \(record.status.rawValue.lowercased())", hint: hint))
        }
        if put.stateful && ![.stop, .restart].contains(put.action) {
            throw RequestError.badRequest(GodwitError("--stateful only applies to stop and restart"))
        }
        let timeout = try RequestError.validating { try WaitTimeout.check(seconds: put.timeout) } ?? defaultStopTimeout
        switch put.action {
        case .start:
            guard record.status == .stopped else { throw wrongState("`godwit restart \(name)` restarts it") }
            return try operation("Starting", container: name) { handle in try await self.startWork(name, handle) }
        case .stop:
            guard record.status.hasProcess else { throw wrongState("it is not running") }
            return try operation("Stopping", container: name) { handle in
                try await self.stopWork(name, handle, stateful: put.stateful, timeout: timeout, force: put.force)
                return [:]
            }
        case .restart:
            guard record.status.hasProcess else { throw wrongState("`godwit start \(name)` starts it") }
            return try operation("Restarting", container: name) { handle in
                try await self.stopWork(name, handle, stateful: put.stateful, timeout: timeout, force: put.force)
                try Task.checkCancellation()
                return try await self.startWork(name, handle)
            }
        case .freeze:
            guard record.status == .running else { throw wrongState("only running containers can be frozen") }
            return try operation("Freezing", container: name) { _ in
                let record = try self.record(name)
                guard let initProcess = record.initProcess else { throw Self.noProcess(name) }
                try await self.driver.freeze(self.spec(record), init: initProcess)
                try self.store.updateContainer(name) { $0.status = .frozen }
                self.events.lifecycle("container-frozen", container: name)
                return [:]
            }
        case .unfreeze:
            guard record.status == .frozen else { throw wrongState("only frozen containers can be unfrozen") }
            return try operation("Unfreezing", container: name) { _ in
                let record = try self.record(name)
                guard let initProcess = record.initProcess else { throw Self.noProcess(name) }
                try await self.driver.unfreeze(self.spec(record), init: initProcess)
                try self.store.updateContainer(name) { $0.status = .running }
                self.events.lifecycle("container-unfrozen", container: name)
                return [:]
            }
        }
    }

    public func state(_ name: String) throws -> ContainerState {
        let info = try get(name)
        return ContainerState(status: info.status, pid: info.pid, ipv4: info.ipv4, stateful: info.stateful)
    }

    static func noProcess(_ name: String) -> GodwitError {
        GodwitError("container '\(name)' has no recorded init process", hint: "`godwit stop --force \(name)` and start it again")
    }

    /// Starts from scratch, or restores the checkpoint a stateful stop left.
    func startWork(_ name: String, _ handle: OperationHandle) async throws -> [String: String] {
        let record = try record(name)
        let spec = self.spec(record)
        let initProcess: ProcessIdentity
        if let checkpoint = record.checkpointDir {
            handle.progress("restoring")
            initProcess = try await driver.restore(spec, from: URL(fileURLWithPath: checkpoint))
            try? FileManager.default.removeItem(atPath: checkpoint)
        } else {
            handle.progress("starting")
            initProcess = try await driver.start(spec)
        }
        try store.updateContainer(name) {
            $0.status = .running
            $0.initProcess = initProcess
            $0.checkpointDir = nil
        }
        events.lifecycle("container-started", container: name, context: ["pid": String(initProcess.pid)])
        return ["pid": String(initProcess.pid)]
    }

    func stopWork(_ name: String, _ handle: OperationHandle, stateful: Bool, timeout: Duration, force: Bool) async throws {
        let record = try record(name)
        let spec = self.spec(record)
        guard let initProcess = record.initProcess else { throw Self.noProcess(name) }
        var checkpoint: String?
        if stateful {
            let directory = spec.directory.appendingPathComponent("checkpoint")
            try? FileManager.default.removeItem(at: directory)
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            handle.progress("checkpointing")
            do {
                try await driver.checkpoint(spec, init: initProcess, to: directory)
            } catch {
                // A failed dump leaves the container running (CRIU resumes it): keep it so.
                try? FileManager.default.removeItem(at: directory)
                throw error
            }
            checkpoint = directory.path
        } else {
            handle.progress(force ? "killing" : "stopping")
            try await driver.stop(spec, init: initProcess, timeout: timeout, force: force)
        }
        try store.updateContainer(name) {
            $0.status = .stopped
            $0.initProcess = nil
            $0.checkpointDir = checkpoint
        }
        events.lifecycle("container-stopped", container: name, context: stateful ? ["stateful": "true"] : nil)
    }
}
