import API
import Foundation
import Synchronization

/// Fans events out to `GET /1.0/events` streams and operation waiters. Publishing never
/// blocks: each subscriber has a bounded buffer that drops the oldest events when the
/// reader falls behind, so a stuck client cannot stall a migration.
///
/// Concurrency model: any task or thread may subscribe, publish or close. The subscriber
/// table and the closed flag are behind `registry`, a Mutex held only to read or change
/// them: continuations are yielded to and finished outside it (an `onTermination` that
/// runs inside `finish()` takes it again to remove itself).
public final class EventBus: Sendable {
    private struct Registry {
        var subscribers: [UUID: AsyncStream<Event>.Continuation] = [:]
        var closed = false
    }
    private let registry = Mutex(Registry())

    public init() {}

    /// Events from now on; the stream ends when the bus closes (daemon shutdown).
    public func subscribe(bufferSize: Int = 1024) -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(bufferSize))
        let id = UUID()
        let added = registry.withLock { r in
            guard !r.closed else { return false }
            r.subscribers[id] = continuation
            return true
        }
        guard added else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return stream
    }

    public func publish(_ event: Event) {
        let targets = registry.withLock { Array($0.subscribers.values) }
        for continuation in targets { continuation.yield(event) }
    }

    public func lifecycle(_ action: String, container: String, context: [String: String]? = nil) {
        publish(Event(type: .lifecycle, metadata: EventMetadata(action: action, source: "/1.0/containers/\(container)",
                                                                context: context)))
    }

    public func log(_ level: String, _ message: String, context: [String: String]? = nil) {
        publish(Event(type: .logging, metadata: EventMetadata(level: level, message: message, context: context)))
    }

    /// Ends every stream so long-lived event responses finish and shutdown can complete.
    public func close() {
        let targets = registry.withLock { r in
            r.closed = true
            let targets = r.subscribers
            r.subscribers = [:]
            return targets
        }
        for continuation in targets.values { continuation.finish() }
    }

    public var subscriberCount: Int { registry.withLock { $0.subscribers.count } }

    private func remove(_ id: UUID) {
        registry.withLock { $0.subscribers[id] = nil }
    }
}
