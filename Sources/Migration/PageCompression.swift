import CZstd
import Foundation
import GodwitCore

/// zstd, as the page records use it: one frame per record payload (at most
/// `PageRecord.maxPages` pages), compressed at a fast level, decompressed into a buffer of
/// exactly the size the record's header promises.
public enum Zstd {
    /// Level 1: the fastest of zstd's regular levels; pages are rarely worth more effort on a
    /// link that must keep up with a running container's dirty rate.
    public static let level: Int32 = 1
    /// What a decoder may be asked to keep in memory for a frame's window: a record's
    /// payload is at most 1 MiB, so a frame that asks for more is not ours.
    static let windowLogMax: Int32 = 21

    public final class Compressor {
        private let context: OpaquePointer

        public init() throws {
            guard let c = ZSTD_createCCtx() else { throw GodwitError("zstd: no compression context (out of memory)") }
            context = c
            _ = ZSTD_CCtx_setParameter(context, ZSTD_c_compressionLevel, Zstd.level)
            // The record carries its own XXH3 checksum and the page count.
            _ = ZSTD_CCtx_setParameter(context, ZSTD_c_checksumFlag, 0)
        }

        deinit { ZSTD_freeCCtx(context) }

        /// Compresses `input` into `output`; nil when the frame would not be smaller than
        /// `output.count` (the caller sizes it below the input: no gain, send it raw).
        public func compress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int? {
            guard input.count > 0, output.count > 0 else { return nil }
            let n = ZSTD_compress2(context, output.baseAddress, output.count, input.baseAddress, input.count)
            return ZSTD_isError(n) != 0 ? nil : n
        }
    }

    public final class Decompressor {
        private let context: OpaquePointer

        public init() throws {
            guard let c = ZSTD_createDCtx() else { throw GodwitError("zstd: no decompression context (out of memory)") }
            context = c
            _ = ZSTD_DCtx_setParameter(context, ZSTD_d_windowLogMax, Zstd.windowLogMax)
        }

        deinit { ZSTD_freeDCtx(context) }

        /// Decompresses `input`, which must expand to exactly `output.count` bytes: a frame
        /// that is longer, shorter or damaged is an error, never a partly filled buffer.
        public func decompress(_ input: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) throws {
            guard input.count > 0 else { throw GodwitError("zstd: an empty frame") }
            let n = ZSTD_decompressDCtx(context, output.baseAddress, output.count, input.baseAddress, input.count)
            if ZSTD_isError(n) != 0 {
                throw GodwitError("zstd: \(String(cString: ZSTD_getErrorName(n)))")
            }
            guard n == output.count else {
                throw GodwitError("zstd: the frame holds \(n) bytes, the record promised \(output.count)")
            }
        }
    }
}

/// When to compress, per move. `auto` compresses while the link is the bottleneck:
/// sending R raw bytes takes R/link, compressing them takes R/zstd + R·ratio/link, so
/// compression wins when link < zstd·(1 − ratio). The writer measures all three as it goes:
/// zstd's speed and ratio from the chunks it compresses, the link from the time raw chunks'
/// writes take (blocked in the socket, or waiting for the cap). Only the second and later
/// raw chunks in a row count: the first after a pause fits in the socket's buffers (and the
/// cap's burst) and would make any link look fast, and so do small writes. So while
/// compressing, two chunks in `probeEvery` go raw to keep the link's figure fresh; while
/// sending raw, one chunk in `probeEvery` is compressed to keep zstd's. A frame that
/// doesn't shrink is never sent (the writer sends those pages raw).
public final class PageCompressionPolicy: @unchecked Sendable {
    public enum Mode: String, Sendable { case auto, on, off }

    public let mode: Mode
    static let probeEvery = 32
    /// Raw writes smaller than this don't tell the link's rate.
    static let measuredWrite = 64 * 1024

    private let lock = NSLock()
    private var linkBytesPerSecond: Double?
    private var zstdBytesPerSecond: Double?
    private var ratio: Double?
    private var chunks = 0
    private var lastWasRaw = false
    private var sent = (pages: 0, raw: UInt64(0), wire: UInt64(0))

    public init(mode: Mode) { self.mode = mode }

    /// Pages sent compressed, their raw bytes and what went on the wire for them.
    public var compressed: (pages: Int, raw: UInt64, wire: UInt64) { lock.withLock { sent } }

    func noteSent(pages: Int, raw: Int, wire: Int) {
        lock.withLock {
            sent = (sent.pages + pages, sent.raw + UInt64(raw), sent.wire + UInt64(wire))
            lastWasRaw = false
        }
    }

    /// Whether to compress the next chunk.
    public func shouldCompress() -> Bool {
        switch mode {
        case .off: return false
        case .on: return true
        case .auto:
            return lock.withLock {
                chunks += 1
                guard let zstd = zstdBytesPerSecond, let ratio else { return true }
                guard let link = linkBytesPerSecond else { return false }
                let phase = chunks % Self.probeEvery
                if link < zstd * (1 - ratio) { return phase != 0 && phase != 1 }
                return phase == 0
            }
        }
    }

    /// A compression attempt: `raw` bytes in `nanos`, `compressed` bytes out (nil: no gain).
    public func noteAttempt(raw: Int, compressed: Int?, nanos: UInt64) {
        lock.withLock {
            let speed = Double(raw) / max(1e-9, Double(nanos) / 1e9)
            zstdBytesPerSecond = Self.blend(zstdBytesPerSecond, speed)
            ratio = Self.blend(ratio, Double(compressed ?? raw) / Double(max(1, raw)))
        }
    }

    /// A raw chunk of `bytes` written to the link in `nanos` (blocked in the socket or the cap).
    public func noteRawWrite(bytes: Int, nanos: UInt64) {
        let seconds = max(1e-9, Double(nanos) / 1e9)
        lock.withLock {
            if lastWasRaw, bytes >= Self.measuredWrite {
                linkBytesPerSecond = Self.blend(linkBytesPerSecond, Double(bytes) / seconds)
            }
            lastWasRaw = true
        }
    }

    /// The estimates so far (bytes/s of the link and of zstd, compressed/raw), for reports and tests.
    public var estimates: (link: Double?, zstd: Double?, ratio: Double?) {
        lock.withLock { (linkBytesPerSecond, zstdBytesPerSecond, ratio) }
    }

    /// An exponentially weighted mean: recent chunks count most, one odd chunk doesn't flip it.
    private static func blend(_ old: Double?, _ new: Double) -> Double {
        guard let old else { return new }
        return old * 0.75 + new * 0.25
    }
}
