import Foundation

/// Runs blocking host work (godwit-spawn, CRIU, rsync, cgroup polling, channel I/O) on a
/// dispatch thread, so it never holds one of the few threads of Swift's cooperative pool.
public func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(with: Result { try work() }) }
    }
}

/// The same for work that can't fail.
public func blocking<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
    await withCheckedContinuation { continuation in
        DispatchQueue.global().async { continuation.resume(returning: work()) }
    }
}
