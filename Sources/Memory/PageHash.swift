import CXXHash
import Foundation

/// Page-level helpers shared by the hashing tracker and the page-record framing: XXH3-64
/// (Debian's libxxhash) and all-zero detection.
public enum PageHash {
    /// XXH3-64 of `bytes` (seed 0).
    @inline(__always)
    public static func xxh3(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        UInt64(XXH3_64bits(bytes.baseAddress, bytes.count))
    }

    /// XXH3-64 over several buffers as one stream (header + payload of a record) without
    /// copying them together.
    public static func xxh3(_ parts: [UnsafeRawBufferPointer]) -> UInt64 {
        guard let state = XXH3_createState() else { return 0 }
        defer { XXH3_freeState(state) }
        XXH3_64bits_reset(state)
        for part in parts where part.count > 0 { XXH3_64bits_update(state, part.baseAddress, part.count) }
        return UInt64(XXH3_64bits_digest(state))
    }

    /// True when every byte is zero. Word-wise: zero pages are common (untouched heap,
    /// read-faulted memory) and are sent as markers, never as 4 KiB of data.
    @inline(__always)
    public static func isZero(_ page: UnsafeRawBufferPointer) -> Bool {
        let words = page.count / 8
        let base = page.baseAddress!
        var acc: UInt64 = 0
        var i = 0
        while i < words {
            acc |= base.loadUnaligned(fromByteOffset: i * 8, as: UInt64.self)
            if i & 63 == 63, acc != 0 { return false }
            i += 1
        }
        for j in (words * 8)..<page.count { acc |= UInt64(base.load(fromByteOffset: j, as: UInt8.self)) }
        return acc == 0
    }
}
