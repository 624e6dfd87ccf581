import API
import Foundation
import GodwitCore
import Synchronization

/// The daemon's container logic: validates requests, keeps the store authoritative and
/// drives the ContainerDriver from operations. A container is "busy" while an operation
/// works on it; other changes to it get 409 instead of racing.
///
/// Concurrency model: called from any route handler, operation task or the supervisor at
/// once. Its own mutable state is only the busy marks, behind `busy` (a Mutex held just to
/// test-and-set or clear a mark, never across driver or store calls); the store, the
/// driver, the operations and the events guard themselves, and everything else is `let`.
public final class ContainerService: Sendable {
    let store: Store
    let images: ImageStore
    let driver: any ContainerDriver
    let operations: OperationManager
    let events: EventBus
    let addresses: AddressPlan?
    let cgroupParent: String?
    /// STATE_DIR/containers
    let containersDirectory: URL
    /// How long a clean stop waits before SIGKILL when the request says -1.
    public let defaultStopTimeout: Duration

    /// Container name → what it is busy with.
    private let busy = Mutex<[String: String]>([:])

    public init(store: Store, images: ImageStore, driver: any ContainerDriver, operations: OperationManager,
                events: EventBus, addresses: AddressPlan?, cgroupParent: String?, containersDirectory: URL,
                defaultStopTimeout: Duration = .seconds(30)) {
        self.store = store; self.images = images; self.driver = driver; self.operations = operations
        self.events = events; self.addresses = addresses; self.cgroupParent = cgroupParent
        self.containersDirectory = containersDirectory
        self.defaultStopTimeout = defaultStopTimeout
    }

    // MARK: reading

    public func list() throws -> [ContainerInfo] { try store.containers().map(\.info) }

    public func get(_ name: String) throws -> ContainerInfo { try record(name).info }

    func record(_ name: String) throws -> ContainerRecord {
        guard let record = try store.container(name) else { throw GodwitError.noSuchContainer(name) }
        return record
    }

    func spec(_ record: ContainerRecord) -> DriverSpec {
        let directory = containersDirectory.appendingPathComponent(record.name)
        let lease = addresses.flatMap { plan in record.ipv4.flatMap(IPv4.init).map { plan.lease($0, mac: record.mac) } }
        return DriverSpec(name: record.name,
                             imageRootfs: images.directory.appendingPathComponent(record.imageFingerprint)
                                 .appendingPathComponent("rootfs"),
                             directory: directory,
                             config: ContainerConfig(record.config), network: lease, cgroupParent: cgroupParent)
    }

    // MARK: busy marks

    func claim(_ name: String, for what: String) throws {
        try busy.withLock { busy in
            if let current = busy[name] {
                throw RequestError.conflict(GodwitError("container '\(name)' is busy (\(current))",
                                                        hint: "wait for it: `godwit operation list` shows what runs"))
            }
            busy[name] = what
        }
    }

    func release(_ name: String) {
        busy.withLock { $0[name] = nil }
    }

    func isBusy(_ name: String) -> Bool {
        busy.withLock { $0[name] != nil }
    }

    /// Runs `work` as an operation holding the container's busy mark until it ends.
    func operation(_ description: String, container name: String, claimed: Bool = false,
                   work: @escaping @Sendable (OperationHandle) async throws -> [String: String]) throws -> OperationInfo {
        if !claimed { try claim(name, for: description) }
        return operations.start("\(description) container \(name)", resources: ["containers": ["/1.0/containers/\(name)"]]) { handle in
            defer { self.release(name) }
            do {
                return try await work(handle)
            } catch {
                throw Self.contextualize(error, "container", name)
            }
        }
    }

    static func contextualize(_ error: any Error, _ key: String, _ value: String) -> any Error {
        switch error {
        case let error as RequestError: return error.with(key, value)
        case let error as GodwitError: return error.with(key, value)
        default: return error
        }
    }

    // MARK: launch

    public func launch(_ request: LaunchRequest) throws -> OperationInfo {
        try RequestError.validating { try ContainerName.validate(request.name) }
        let config = try RequestError.validating { try ContainerConfig(validating: request.config) }
        try Self.refuseDaemonOwned(request.config.keys)
        guard try images.isKnown(request.image) else { throw ImageStore.unknown(request.image) }
        let name = request.name
        try claim(name, for: "launching")
        let inserted: ContainerRecord
        do {
            let record = ContainerRecord(name: name, image: request.image,
                                         imageFingerprint: try store.image(request.image)?.fingerprint ?? "",
                                         config: config.values, status: .creating, mac: StableMAC.forContainer(name))
            inserted = try insertAllocatingIdmap(record)
        } catch {
            release(name)
            throw error
        }
        return try operation(request.start ? "Launching" : "Creating", container: name, claimed: true) { handle in
            var created = false
            var started: ProcessIdentity?
            do {
                let image = try await self.images.resolve(request.image, progress: handle)
                let record = try self.store.updateContainer(name) { $0.imageFingerprint = image.fingerprint }
                let spec = self.spec(record)
                try FileManager.default.createDirectory(at: spec.directory, withIntermediateDirectories: true)
                try Task.checkCancellation()
                handle.progress("creating")
                created = true
                try await self.driver.create(spec)
                try Task.checkCancellation()
                var metadata: [String: String] = ["ipv4": inserted.ipv4 ?? ""]
                if request.start {
                    handle.progress("starting")
                    let initProcess = try await self.driver.start(spec)
                    started = initProcess
                    metadata["pid"] = String(initProcess.pid)
                    try self.store.updateContainer(name) {
                        $0.status = .running
                        $0.initProcess = initProcess
                    }
                } else {
                    try self.store.updateContainer(name) { $0.status = .stopped }
                }
                self.events.lifecycle("container-created", container: name)
                if started != nil { self.events.lifecycle("container-started", container: name) }
                return metadata
            } catch {
                await self.undoLaunch(name, created: created, started: started)
                throw error
            }
        }
    }

    /// Leaves nothing of a failed or cancelled launch: process, driver state, files, row.
    private func undoLaunch(_ name: String, created: Bool, started: ProcessIdentity?) async {
        guard let record = try? store.container(name) else { return }
        let spec = self.spec(record)
        if let started { try? await driver.stop(spec, init: started, timeout: .seconds(5), force: true) }
        if created {
            do { try await driver.destroy(spec) } catch {
                events.log("error", "cleaning up after the failed launch of \(name): \(error)")
            }
        }
        try? FileManager.default.removeItem(at: spec.directory)
        try? store.deleteContainer(name)
    }

    // MARK: delete

    public func delete(_ name: String, force: Bool) throws -> OperationInfo {
        let record = try record(name)
        if record.status.hasProcess && !force {
            throw RequestError.badRequest(GodwitError("container '\(name)' is \(record.status.rawValue.lowercased())",
                                                      hint: "stop it first (`godwit stop \(name)`) or use `godwit delete --force \(name)`"))
        }
        return try operation("Deleting", container: name) { handle in
            let record = try self.record(name)
            let spec = self.spec(record)
            if record.status.hasProcess, let initProcess = record.initProcess {
                handle.progress("stopping")
                try await self.driver.stop(spec, init: initProcess, timeout: .seconds(5), force: true)
            }
            handle.progress("removing")
            try await self.driver.destroy(spec)
            try? FileManager.default.removeItem(at: spec.directory)
            try self.store.deleteContainer(name)
            self.events.lifecycle("container-deleted", container: name)
            return [:]
        }
    }

    // MARK: configuration

    /// PUT: the new configuration replaces the old one (the daemon's volatile keys stay).
    public func replaceConfig(_ name: String, _ put: ContainerPut) async throws -> ContainerInfo {
        let config = try RequestError.validating { try ContainerConfig(validating: put.config) }
        try Self.refuseDaemonOwned(put.config.keys)
        return try await applyConfig(name) { current in
            config.values.merging(current.filter { ConfigKey.isDaemonOwned($0.key) }) { _, kept in kept }
        }
    }

    /// PATCH: merges; null unsets.
    public func patchConfig(_ name: String, _ patch: ContainerPatch) async throws -> ContainerInfo {
        var changes: [String: String?] = [:]
        try Self.refuseDaemonOwned(patch.config.keys)
        for (key, value) in patch.config {
            if let value {
                changes[key] = try RequestError.validating { try ConfigKey.validate(key, value) }
            } else {
                changes[key] = .some(nil)
            }
        }
        return try await applyConfig(name) { current in
            var merged = current
            for (key, value) in changes { merged[key] = value }
            return merged
        }
    }

    /// The driver applies the change to a running container first, so the store never
    /// claims limits that the kernel doesn't enforce.
    private func applyConfig(_ name: String, _ change: ([String: String]) -> [String: String]) async throws -> ContainerInfo {
        try claim(name, for: "updating its configuration")
        defer { release(name) }
        var record = try record(name)
        let before = record.config
        record.config = change(record.config)
        for key in ConfigKey.launchOnly where ContainerConfig(before)[key] != ContainerConfig(record.config)[key] {
            throw RequestError.badRequest(GodwitError("\(key) can only be set at launch",
                hint: "its files would have to change owner: copy the container instead (`godwit launch` a new one with -c \(key)=...)"))
        }
        let initProcess = record.status.hasProcess ? record.initProcess : nil
        do {
            try await driver.reconfigure(spec(record), init: initProcess)
        } catch {
            throw Self.contextualize(error, "container", name)
        }
        let config = record.config
        let updated = try store.updateContainer(name) { $0.config = config }
        events.lifecycle("container-updated", container: name)
        return updated.info
    }

    // MARK: exec and console

    public func execPlan(_ name: String, _ request: ExecRequest) throws -> ExecPlan {
        guard !request.command.isEmpty else {
            throw RequestError.badRequest(GodwitError("no command given", hint: "e.g. `godwit exec \(name) -- sh`"))
        }
        let record = try record(name)
        guard record.status == .running, let initProcess = record.initProcess else {
            throw RequestError.badRequest(GodwitError("container '\(name)' is \(record.status.rawValue.lowercased())",
                                                      hint: record.status == .frozen ? "`godwit unfreeze \(name)` first"
                                                                                     : "`godwit start \(name)` first"))
        }
        let spec = self.spec(record)
        var environment = spec.config.environment
        for (key, value) in request.environment { environment[key] = value }
        do {
            return try driver.execPlan(spec, init: initProcess, command: request.command, environment: environment,
                                       terminal: request.terminal ?? false)
        } catch {
            throw Self.contextualize(error, "container", name)
        }
    }

    public func checkpointCheck(_ name: String) throws -> CheckpointCheck {
        let record = try record(name)
        guard record.status == .running, let initProcess = record.initProcess else {
            throw RequestError.badRequest(GodwitError("container '\(name)' is \(record.status.rawValue.lowercased()): only a running container is checkpointed",
                                                      hint: "`godwit start \(name)` first"))
        }
        do {
            return try driver.checkpointCheck(spec(record), init: initProcess)
        } catch {
            throw Self.contextualize(error, "container", name)
        }
    }

    /// The init's output; only the tail when the log is large.
    public func console(_ name: String, maxBytes: Int = 1 << 20) throws -> ConsoleLog {
        let log = driver.consoleLog(spec(try record(name)))
        guard let handle = FileHandle(forReadingAtPath: log.path) else { return ConsoleLog(log: "") }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try handle.seek(toOffset: size > UInt64(maxBytes) ? size - UInt64(maxBytes) : 0)
        return ConsoleLog(log: String(decoding: try handle.readToEnd() ?? Data(), as: UTF8.self))
    }
}
