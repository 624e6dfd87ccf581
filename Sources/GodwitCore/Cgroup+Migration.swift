import Foundation

extension Cgroup {
    /// Anonymous memory of the cgroup (v1 memory.stat total_rss, v2 anon); nil when the
    /// memory controller says nothing. What `auto` sizes a move by.
    public var anonymousMemoryBytes: UInt64? {
        guard let stat = read("memory.stat") else { return nil }
        for line in stat.split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2, parts[0] == "total_rss" || parts[0] == "anon", let value = UInt64(parts[1]) { return value }
        }
        return nil
    }

    /// No task of the cgroup can change a file any more: the freezer is frozen, or (after
    /// CRIU seized every task and thawed the freezer again) every thread is in a ptrace stop.
    public var isHeldStill: Bool {
        if isFrozen { return true }
        let pids = processes()
        guard !pids.isEmpty else { return false }
        for pid in pids {
            guard let threads = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task"), !threads.isEmpty else {
                return false
            }
            for tid in threads where HostEnvironment.threadState(pid: pid, tid: tid) != "t" { return false }
        }
        return true
    }
}
