import CGodwit
import Foundation
import GodwitCore

/// The C shim returns -errno; these turn that into GodwitError with errno kept as context
/// so callers can react to specific codes (e.g. EPERM from an untracked VMA) without
/// parsing messages.
extension GodwitError {
    static func cgw(_ call: String, _ rc: Int, hint: String? = nil) -> GodwitError {
        GodwitError.errno(call, Int32(-rc), hint: hint).with("errno", String(-rc))
    }

    /// The errno of the failed syscall this error came from, if any.
    public var errnoCode: Int32? {
        context.first(where: { $0.0 == "errno" }).flatMap { Int32($0.1) }
    }
}

/// Throws for a negative shim return value, passes others through.
@discardableResult
func checkCGW(_ rc: Int, _ call: String, hint: String? = nil) throws -> Int {
    if rc < 0 { throw GodwitError.cgw(call, rc, hint: hint) }
    return rc
}

@discardableResult
func checkCGW(_ rc: Int32, _ call: String, hint: String? = nil) throws -> Int32 {
    Int32(try checkCGW(Int(rc), call, hint: hint))
}

/// strerror for a positive errno, short enough for a one-line probe detail.
func errnoName(_ code: Int32) -> String {
    let names: [Int32: String] = [
        EPERM: "EPERM", ENOENT: "ENOENT", ESRCH: "ESRCH", EINTR: "EINTR", EIO: "EIO", EBADF: "EBADF",
        EAGAIN: "EAGAIN", ENOMEM: "ENOMEM", EACCES: "EACCES", EFAULT: "EFAULT", EBUSY: "EBUSY",
        EINVAL: "EINVAL", ENOTTY: "ENOTTY", ENOSYS: "ENOSYS", ETIMEDOUT: "ETIMEDOUT", EPIPE: "EPIPE",
    ]
    return names[code] ?? "errno \(code)"
}

/// Monotonic time in nanoseconds, for the short intervals we report (target stop time).
@inline(__always)
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

func formatMillis(_ nanos: UInt64) -> String {
    String(format: "%.2f ms", Double(nanos) / 1e6)
}

/// The system page size (4096 on x86_64; 16 KiB or 64 KiB on some arm64 kernels).
public let systemPageSize = UInt64(sysconf(Int32(_SC_PAGESIZE)))
