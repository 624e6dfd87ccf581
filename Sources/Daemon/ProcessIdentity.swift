import Foundation
import GodwitCore

// The same type as Runtime.ProcessIdentity (same fields, same JSON): when Daemon starts
// depending on Runtime, delete this file and use that one.

/// Identifies one process across daemon restarts: a pid alone can be reused, so adoption
/// also compares the kernel's start time (field 22 of /proc/PID/stat, in clock ticks).
public struct ProcessIdentity: Codable, Sendable, Equatable {
    public var pid: Int32
    public var startTime: UInt64

    public init(pid: Int32, startTime: UInt64) { self.pid = pid; self.startTime = startTime }

    /// The identity of a live process, or nil when it doesn't exist (or is a zombie).
    public static func of(_ pid: pid_t) -> ProcessIdentity? {
        guard pid > 0, let stat = HostEnvironment.read("/proc/\(pid)/stat") else { return nil }
        // comm (field 2) may contain spaces and parentheses: split after its last ')'.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state), so field 22 is fields[19].
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X",
              let start = UInt64(fields[19]) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start)
    }

    /// Whether this exact process (not a later one that got the same pid) still runs.
    public var isAlive: Bool { ProcessIdentity.of(pid) == self }
}
