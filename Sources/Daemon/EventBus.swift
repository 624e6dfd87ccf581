import API
import Foundation

/// Fans events out to `GET /1.0/events` streams and operation waiters. Publishing never
/// blocks: each subscriber has a bounded buffer that drops the oldest events when the
/// reader falls behind, so a stuck client cannot stall a migration.
public final class EventBus: @unchecked Sendable {
    private let lock = NSLock()
    private var subscribers: [UUID: AsyncStream<Event>.Continuation] = [:]
    private var closed = false

    public init() {}

    /// Events from now on; the stream ends when the bus closes (daemon shutdown).
    public func subscribe(bufferSize: Int = 1024) -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream<Event>.makeStream(bufferingPolicy: .bufferingNewest(bufferSize))
        let id = UUID()
        lock.lock()
        if closed {
            lock.unlock()
            continuation.finish()
            return stream
        }
        subscribers[id] = continuation
        lock.unlock()
        continuation.onTermination = { [weak self] _ in self?.remove(id) }
        return stream
    }

    public func publish(_ event: Event) {
        lock.lock()
        let targets = Array(subscribers.values)
        lock.unlock()
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
        lock.lock()
        closed = true
        let targets = subscribers
        subscribers = [:]
        lock.unlock()
        for continuation in targets.values { continuation.finish() }
    }

    public var subscriberCount: Int {
        lock.lock(); defer { lock.unlock() }
        return subscribers.count
    }

    private func remove(_ id: UUID) {
        lock.lock()
        subscribers[id] = nil
        lock.unlock()
    }
}
