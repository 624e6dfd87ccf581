import Foundation
import GodwitCore
import Synchronization

/// The cap on a move's memory pages (`--bandwidth`, migration.bandwidth): one token bucket
/// per move, shared by everything that sends pages for it (pre-copy rounds, the hybrid push,
/// the page relay's answers), so their sum keeps to the rate even when they overlap.
///
/// Senders take tokens before they write and sleep off a debt: the bucket may go negative,
/// so concurrent senders queue behind each other in the order they asked, and a large write
/// waits exactly as long as its bytes need at the rate.
public final class RateLimiter: Sendable {
    public let bytesPerSecond: Double
    /// How much may go at once after a pause: about 10 ms of traffic, at least 64 KiB, so
    /// the cap doesn't add a wake-up per small write.
    public let burstBytes: Double
    private let state: Mutex<(tokens: Double, at: UInt64, waitedNanos: UInt64)>

    public init(_ rate: Bandwidth) {
        bytesPerSecond = rate.bytesPerSecond
        burstBytes = max(64 * 1024, rate.bytesPerSecond / 100)
        state = Mutex((burstBytes, DispatchTime.now().uptimeNanoseconds, 0))
    }

    /// Total time senders slept for the cap.
    public var waitedNanos: UInt64 { state.withLock { $0.waitedNanos } }

    /// Takes `bytes` tokens, sleeping until the bucket has paid them off.
    public func take(_ bytes: Int) {
        guard bytes > 0 else { return }
        let wait = state.withLock { s -> Double in
            let now = DispatchTime.now().uptimeNanoseconds
            s.tokens = min(burstBytes, s.tokens + Double(now - s.at) / 1e9 * bytesPerSecond)
            s.at = now
            s.tokens -= Double(bytes)
            guard s.tokens < 0 else { return 0 }
            let seconds = -s.tokens / bytesPerSecond
            s.waitedNanos &+= UInt64(seconds * 1e9)
            return seconds
        }
        if wait > 0 { Thread.sleep(forTimeInterval: wait) }
    }
}

/// A ByteSink that keeps to a RateLimiter: writes go out in slices of at most 64 KiB, each
/// paid for before it is written, so the link sees a steady stream rather than bursts of a
/// whole record followed by silence.
public final class RateLimitedSink: ByteSink {
    public let sink: ByteSink
    public let limiter: RateLimiter
    static let slice = 64 * 1024

    public init(_ sink: ByteSink, limiter: RateLimiter) {
        self.sink = sink
        self.limiter = limiter
    }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var offset = 0
        while offset < bytes.count {
            let n = min(Self.slice, bytes.count - offset)
            limiter.take(n)
            try sink.write(UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)]))
            offset += n
        }
    }
}
