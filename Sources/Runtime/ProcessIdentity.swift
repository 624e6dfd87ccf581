import Foundation
import GodwitCore

/// A pid plus its start time. Pids are reused; the pair is not, so a daemon that
/// restarts can tell its container's init from an unrelated process that got the pid.
public struct ProcessIdentity: Codable, Sendable, Equatable {
    public let pid: pid_t
    /// Field 22 of /proc/PID/stat: clock ticks after boot.
    public let startTime: UInt64

    public init(pid: pid_t, startTime: UInt64) {
        self.pid = pid
        self.startTime = startTime
    }

    /// The live process with this pid now; nil if there is none or it is a zombie (an
    /// exited init lingers as one until its reaper gets to it).
    public static func of(_ pid: pid_t) -> ProcessIdentity? {
        guard pid > 0, let fields = HostEnvironment.procStatFields("/proc/\(pid)/stat") else { return nil }
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X",
              let start = UInt64(fields[19]) else { return nil }
        return ProcessIdentity(pid: pid, startTime: start)
    }

    public var isAlive: Bool { ProcessIdentity.of(pid) == self }
}
