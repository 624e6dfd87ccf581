import CGodwit
import Foundation
import GodwitCore

/// A forked child owning `pages` private anonymous pages that it writes only on command,
/// so a tracker's answer can be checked against the truth (probes and tests). It is
/// killed and reaped by `terminate()` or, at the latest, when this object is released.
public final class ProbeTarget {
    public var pid: pid_t { raw.pid }
    /// Address of page 0 in the child.
    public let base: UInt64
    public let pages: Int
    public let pageSize = systemPageSize
    /// The pipe ends as numbered inside the child (for pidfd_getfd tests).
    public var childCommandFD: Int32 { raw.child_cmd_fd }
    public var childAckFD: Int32 { raw.child_ack_fd }
    /// Our read end of the ack pipe (the same pipe as childAckFD).
    public var ackFD: Int32 { raw.ack_fd }
    /// Marker in bytes 8..15 of page i: `magic ^ i`.
    public static let magic = UInt64(CGW_PROBE_MAGIC)

    private var raw = cgw_probe_target()
    private let timeoutMs: Int32

    public init(pages: Int, timeoutMs: Int32 = 2000) throws {
        precondition(pages > 0 && pages < 1 << 24)
        self.pages = pages
        self.timeoutMs = timeoutMs
        try checkCGW(cgw_spawn_probe_target(pages, &raw), "starting the probe child")
        base = raw.base
    }

    deinit { terminate() }

    public var range: Range<UInt64> { base..<(base + UInt64(pages) * pageSize) }
    public func address(ofPage i: Int) -> UInt64 { base + UInt64(i) * pageSize }
    /// Page index of an address inside the block.
    public func page(at address: UInt64) -> Int { Int((address - base) / pageSize) }

    /// Makes the child write into page `i` and waits until it did.
    public func write(page i: Int) throws {
        precondition(i >= 0 && i < pages)
        _ = try command(cgw_probe_cmd_write(UInt32(i)))
    }

    /// Pages first, first+stride, ... (count of them) in one round trip.
    public func write(first: Int, count: Int, stride: Int = 1) throws {
        precondition(stride > 0 && stride < 256 && count < 1 << 24)
        let ack = try command(cgw_probe_cmd_stride(UInt32(first), UInt32(count), UInt8(stride)))
        guard ack == UInt64(count) else { throw GodwitError("probe child wrote \(ack) of \(count) pages") }
    }

    public func write<S: Sequence>(pages list: S) throws where S.Element == Int {
        for i in list { try write(page: i) }
    }

    /// Makes the child drop page `i` (MADV_DONTNEED): its pte becomes empty and the
    /// next touch faults in a fresh zero page.
    public func drop(page i: Int) throws {
        precondition(i >= 0 && i < pages)
        _ = try command(cgw_probe_cmd_drop(UInt32(i)))
    }

    /// Round trip proving the child still runs its loop; returns commands handled so far.
    @discardableResult
    public func ping() throws -> UInt64 { try command(cgw_probe_cmd_ping()) }

    /// How many SIGUSR1 the child has handled (its handler uses SA_RESTART).
    public func signalsReceived() throws -> UInt64 { try command(cgw_probe_cmd_signals()) }

    /// Sends without waiting (e.g. while the child is stopped); collect with `readAck`.
    public func send(_ cmd: UInt64) throws {
        try checkCGW(cgw_probe_send(&raw, cmd), "sending to probe child \(pid)")
    }

    public func readAck(timeoutMs: Int32? = nil) throws -> UInt64 {
        var ack: UInt64 = 0
        try checkCGW(cgw_probe_read_ack(&raw, &ack, timeoutMs ?? self.timeoutMs), "waiting for probe child \(pid)")
        guard ack != UInt64.max else { throw GodwitError("probe child \(pid) rejected a command") }
        return ack
    }

    public func command(_ cmd: UInt64) throws -> UInt64 {
        try send(cmd)
        return try readAck()
    }

    /// SIGKILL + waitpid + close the pipes. Safe to call more than once.
    public func terminate() { cgw_probe_target_destroy(&raw) }

    public var isRunning: Bool { raw.pid > 0 && kill(raw.pid, 0) == 0 }
}

/// Reads another process's memory with process_vm_readv (the hashing tracker's and the
/// page sender's primitive; ~11 GB/s in 1 MiB chunks on the project machine).
public struct ProcessMemoryReader: Sendable {
    public let pid: pid_t
    public init(pid: pid_t) { self.pid = pid }

    /// Reads `buffer.count` bytes at `address`; returns the number read (short when the
    /// range runs into an unmapped page).
    public func read(at address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws -> Int {
        try checkCGW(cgw_process_vm_read(pid, buffer.baseAddress, address, buffer.count),
                     "process_vm_readv(\(pid), 0x\(String(address, radix: 16)))",
                     hint: "needs ptrace rights over the target (root)")
    }

    public func read(at address: UInt64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = try bytes.withUnsafeMutableBytes { try read(at: address, into: $0) }
        return Array(bytes.prefix(n))
    }
}
