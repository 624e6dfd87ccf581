import Synchronization

/// A value several threads share, behind a Mutex, in a class so that escaping closures
/// (threads, dispatch blocks) can hold it. The Mutex is the only way in.
public final class Locked<Value>: Sendable {
    private let mutex: Mutex<Value>

    public init(_ value: sending Value) { mutex = Mutex(value) }

    public func withLock<T>(_ body: (inout sending Value) throws -> sending T) rethrows -> sending T {
        try mutex.withLock(body)
    }
}

extension Locked where Value: Sendable {
    public var value: Value {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
}

/// A value handed from one task to the one thread that uses it next (a blocking call, a
/// worker thread), and never used by two at once: the hand-off is the synchronisation.
/// For types that own a socket or a cursor and are used strictly in sequence (a dirty
/// tracker between rounds, a record writer, a page-server client at its CLOSE).
public struct HandOff<Value>: @unchecked Sendable {
    public let value: Value
    public init(_ value: Value) { self.value = value }
}
