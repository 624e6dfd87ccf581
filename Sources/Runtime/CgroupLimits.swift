import Foundation
import GodwitCore

extension Cgroup {
    /// Limits go in v1 files on hybrid hosts and in cgroup2's files on pure v2 hosts.
    public func apply(_ limits: ResourceLimits) throws {
        if let bytes = limits.memoryBytes {
            let name = layout.v1["memory"] != nil ? "memory.limit_in_bytes" : "memory.max"
            try write(String(bytes), to: try file(name, of: "memory"))
        }
        if let pids = limits.pidsMax {
            try write(String(pids), to: try file("pids.max", of: "pids"))
        }
        if let cpus = limits.cpuQuota {
            let period = 100_000
            let quota = max(1000, Int((cpus * Double(period)).rounded()))
            if layout.v1["cpu"] != nil {
                try write(String(period), to: try file("cpu.cfs_period_us", of: "cpu"))
                try write(String(quota), to: try file("cpu.cfs_quota_us", of: "cpu"))
            } else {
                try write("\(quota) \(period)", to: try file("cpu.max", of: "cpu"))
            }
        }
    }

}
