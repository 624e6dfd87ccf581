import API
import Foundation
import GodwitCore
import Synchronization

/// What a running operation's work sees: a way to report progress and its identity (for
/// error context). Cancellation is ordinary Task cancellation: the work calls
/// `try Task.checkCancellation()` at points where stopping leaves things consistent.
public struct OperationHandle: Sendable {
    public let id: String
    let manager: OperationManager

    public func progress(_ stage: String, percent: Int? = nil, processedBytes: UInt64? = nil, totalBytes: UInt64? = nil,
                         bytesPerSecond: Double? = nil, etaSeconds: Double? = nil) {
        manager.update(id) { $0.progress = OperationProgress(stage: stage, percent: percent,
                                                             processedBytes: processedBytes, totalBytes: totalBytes,
                                                             bytesPerSecond: bytesPerSecond, etaSeconds: etaSeconds) }
    }
}

/// Runs long work as LXD-style operations: each is a background Task whose state is kept
/// in memory, published as events and persisted at its start and end.
///
/// Concurrency model: route handlers start, read and cancel operations while each one's
/// work runs as its own Task and reports through `update`/`finish`. The live operations
/// and their tasks are behind `registry`, a Mutex held only to read or change those maps
/// (and to apply `update`'s change, a plain assignment to the operation's fields):
/// persisting, publishing events and cancelling happen outside it.
public final class OperationManager: Sendable {
    public typealias Work = @Sendable (OperationHandle) async throws -> [String: String]

    private struct Registry {
        /// Running operations, and a finishing one until its final state is persisted
        /// (from then on the store serves it).
        var live: [String: OperationInfo] = [:]
        /// Their work, while it can still be cancelled.
        var tasks: [String: Task<Void, Never>] = [:]
    }

    private let store: Store
    private let events: EventBus
    private let registry = Mutex(Registry())

    public init(store: Store, events: EventBus) {
        self.store = store
        self.events = events
    }

    /// Starts `work` and returns the operation as it is now (Running).
    @discardableResult
    public func start(_ description: String, resources: [String: [String]], mayCancel: Bool = true,
                      work: @escaping Work) -> OperationInfo {
        let now = Date()
        let id = UUID().uuidString.lowercased()
        let operation = OperationInfo(id: id, description: description, status: .running, resources: resources,
                                  createdAt: now, updatedAt: now, mayCancel: mayCancel)
        registry.withLock { $0.live[id] = operation }
        persist(operation)
        events.publish(Event(type: .operation, metadata: EventMetadata(operation: operation)))
        let handle = OperationHandle(id: id, manager: self)
        let task = Task {
            do {
                let metadata = try await work(handle)
                self.finish(id, status: .success, metadata: metadata, error: nil)
            } catch {
                let cancelled = Task.isCancelled || error is CancellationError
                var response = RequestError.response(for: error)
                response.context.append(["operation", id])
                self.finish(id, status: cancelled ? .cancelled : .failure, metadata: nil, error: response)
            }
        }
        registry.withLock { r in
            // The work may already have finished; only keep the task while it can be cancelled.
            if r.live[id]?.status.isFinal == false { r.tasks[id] = task }
        }
        return self.operation(id) ?? operation
    }

    public func operation(_ id: String) -> OperationInfo? {
        let found = registry.withLock { $0.live[id] }
        return found ?? (try? store.operation(id)) ?? nil
    }

    /// Live operations plus finished ones from the store, oldest first.
    public func list() throws -> [OperationInfo] {
        var all: [String: OperationInfo] = [:]
        for operation in try store.operations() { all[operation.id] = operation }
        let live = registry.withLock { $0.live }
        for (id, operation) in live { all[id] = operation }
        return all.values.sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    /// Waits until the operation is final or `timeout` passes; returns its state then.
    public func wait(_ id: String, timeout: Duration?) async throws -> OperationInfo {
        // Subscribe before looking, so a finish between the look and the wait isn't missed.
        let stream = events.subscribe()
        guard let current = operation(id) else { throw Self.notFound(id) }
        if current.status.isFinal { return current }
        return await withTaskGroup(of: OperationInfo?.self) { group in
            group.addTask {
                for await event in stream where event.type == .operation {
                    if let op = event.metadata.operation, op.id == id, op.status.isFinal { return op }
                }
                return nil
            }
            if let timeout {
                group.addTask {
                    try? await Task.sleep(for: timeout)
                    return nil
                }
            }
            let first = await group.next() ?? nil
            group.cancelAll()
            return first ?? self.operation(id) ?? current
        }
    }

    /// Asks the work to stop; it ends as Cancelled at its next safe point.
    public func cancel(_ id: String) throws -> OperationInfo {
        guard let current = operation(id) else { throw Self.notFound(id) }
        guard !current.status.isFinal else {
            throw RequestError.badRequest(GodwitError("operation \(id) already finished (\(current.status.rawValue))"))
        }
        guard current.mayCancel else {
            throw RequestError.badRequest(GodwitError("operation \(id) (\(current.description)) cannot be cancelled",
                                                      hint: "wait for it with `godwit operation wait \(id)`"))
        }
        let task = registry.withLock { $0.tasks[id] }
        task?.cancel()
        return current
    }

    /// Called at daemon start: what was running when the last daemon died has failed.
    public func failInterrupted() throws {
        for operation in try store.failInterruptedOperations() {
            events.publish(Event(type: .operation, metadata: EventMetadata(operation: operation)))
        }
    }

    /// Waits for every live operation (tests and shutdown use this).
    public func drain() async {
        let running = registry.withLock { Array($0.tasks.values) }
        for task in running { await task.value }
    }

    func update(_ id: String, _ change: (inout OperationInfo) -> Void) {
        let updated = registry.withLock { r -> OperationInfo? in
            guard var operation = r.live[id], !operation.status.isFinal else { return nil }
            change(&operation)
            operation.updatedAt = Date()
            r.live[id] = operation
            return operation
        }
        guard let operation = updated else { return }
        events.publish(Event(type: .operation, metadata: EventMetadata(operation: operation)))
    }

    private func finish(_ id: String, status: OperationStatus, metadata: [String: String]?, error: ErrorResponse?) {
        let finished = registry.withLock { r -> OperationInfo? in
            guard var operation = r.live[id] else { return nil }
            operation.status = status
            operation.updatedAt = Date()
            if let metadata { operation.metadata = metadata }
            operation.error = error
            r.live[id] = operation
            return operation
        }
        guard let operation = finished else { return }
        persist(operation)
        // Finished operations are served from the store (persisted above); memory holds only
        // live ones. Removing after persisting means readers never see a stale Running.
        registry.withLock { r in
            r.live[id] = nil
            r.tasks[id] = nil
        }
        events.publish(Event(type: .operation, metadata: EventMetadata(operation: operation)))
    }

    private func persist(_ operation: OperationInfo) {
        do { try store.saveOperation(operation) } catch {
            events.log("error", "cannot record operation \(operation.id): \(error)")
        }
    }

    static func notFound(_ id: String) -> RequestError {
        .notFound(GodwitError("operation '\(id)' not found", hint: "`godwit operation list` shows the operations"))
    }
}
