import Foundation
import GodwitCore

/// Auto-converge: lowers a container's CPU allowance step by step through its cgroup (like
/// QEMU throttling vCPUs) so that it dirties memory more slowly than pre-copy sends it, and
/// puts the original allowance back afterwards. v1: cpu.cfs_quota_us/cpu.cfs_period_us;
/// v2: cpu.max ("QUOTA PERIOD" or "max PERIOD").
public final class CPUThrottle {
    public let cgroup: Cgroup
    /// The allowance before we touched it: quota (nil = unlimited) and period, in µs.
    public let originalQuota: Int?
    public let period: Int
    public private(set) var currentPercent: Int?
    private let v1: Bool

    public init(cgroup: Cgroup) throws {
        self.cgroup = cgroup
        v1 = cgroup.layout.v1["cpu"] != nil
        if v1 {
            let quota = Int(HostEnvironment.read(try cgroup.file("cpu.cfs_quota_us", of: "cpu")) ?? "") ?? -1
            period = Int(HostEnvironment.read(try cgroup.file("cpu.cfs_period_us", of: "cpu")) ?? "") ?? 100_000
            originalQuota = quota > 0 ? quota : nil
        } else {
            let parts = (HostEnvironment.read(try cgroup.file("cpu.max", of: "cpu")) ?? "max 100000").split(separator: " ")
            period = parts.count > 1 ? Int(parts[1]) ?? 100_000 : 100_000
            originalQuota = parts.first.flatMap { Int($0) }
        }
    }

    /// The quota that gives `percent` of the original allowance (an unlimited container
    /// is taken to have every online CPU).
    public static func quota(percent: Int, originalQuota: Int?, period: Int, cpus: Int) -> Int {
        let base = originalQuota ?? period * max(1, cpus)
        return max(1000, base * percent / 100)
    }

    public func apply(percent: Int) throws {
        let q = Self.quota(percent: percent, originalQuota: originalQuota, period: period,
                           cpus: ProcessInfo.processInfo.activeProcessorCount)
        if v1 {
            try cgroup.write(String(q), to: try cgroup.file("cpu.cfs_quota_us", of: "cpu"))
        } else {
            try cgroup.write("\(q) \(period)", to: try cgroup.file("cpu.max", of: "cpu"))
        }
        currentPercent = percent
    }

    /// Puts the original allowance back. Safe to call more than once.
    public func restore() throws {
        guard currentPercent != nil else { return }
        if v1 {
            try cgroup.write(String(originalQuota ?? -1), to: try cgroup.file("cpu.cfs_quota_us", of: "cpu"))
        } else {
            try cgroup.write("\(originalQuota.map(String.init) ?? "max") \(period)", to: try cgroup.file("cpu.max", of: "cpu"))
        }
        currentPercent = nil
    }
}
