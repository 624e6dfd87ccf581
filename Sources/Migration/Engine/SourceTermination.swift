import Foundation
import GodwitCore
import Memory

/// Makes sure the source can never run again: SIGKILL to every task of its cgroup while
/// CRIU holds them frozen (cgroup freezer or ptrace stop). A task with SIGKILL pending can
/// not return to user space: it dies at the latest when CRIU lets it go, whether CRIU
/// completes the dump (it kills them itself) or fails it (it "resumes" them, into death).
/// CRIU's page server keeps serving: the lazy pages sit in its pipes (vmspliced at dump,
/// read back with tee()), not in the tasks' address spaces.
public enum SourceTermination {
    /// Kills every task and checks that each is gone, a zombie, or has SIGKILL pending.
    /// Returns the number of tasks; throws if one could not be doomed.
    public static func killAll(cgroup: Cgroup) throws -> Int {
        let pids = ContainerProcesses.hostPIDs(cgroupDirectories: cgroup.directories)
        for pid in pids { kill(pid, SIGKILL) }
        for pid in pids where !isDoomed(pid) {
            throw GodwitError("source task \(pid) survived SIGKILL")
        }
        return pids.count
    }

    /// Gone, dead, or SIGKILL pending (shared or per-thread).
    public static func isDoomed(_ pid: pid_t) -> Bool {
        guard let status = HostEnvironment.read("/proc/\(pid)/status") else { return true }
        for line in status.split(separator: "\n") {
            if line.hasPrefix("State:"), line.contains("Z") || line.contains("X") { return true }
            if line.hasPrefix("ShdPnd:") || line.hasPrefix("SigPnd:"),
               let mask = UInt64(line.split(separator: "\t").last ?? "", radix: 16), mask & (1 << 8) != 0 { return true }
        }
        return false
    }
}
