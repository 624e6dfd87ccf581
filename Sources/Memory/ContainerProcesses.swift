import Foundation
import GodwitCore

/// A process of a container as the trackers and CRIU see it: the host pid (for /proc and
/// ptrace), the pid inside the container's pid namespace (CRIU's image names and lazy page
/// requests use that one), and the start time (pids are reused; the pair is not).
public struct TrackedProcess: Sendable, Hashable, CustomStringConvertible {
    public var hostPID: pid_t
    public var nsPID: pid_t
    public var startTime: UInt64

    public init(hostPID: pid_t, nsPID: pid_t, startTime: UInt64) {
        self.hostPID = hostPID
        self.nsPID = nsPID
        self.startTime = startTime
    }

    public var description: String { "\(nsPID) (host \(hostPID))" }

    /// Reads /proc/PID/status (NSpid: innermost namespace last) and /proc/PID/stat (start
    /// time, state). nil for a gone or zombie process: a zombie has no memory to move.
    public static func of(hostPID pid: pid_t) -> TrackedProcess? {
        guard let status = HostEnvironment.read("/proc/\(pid)/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("NSpid:") }),
              let ns = line.split(whereSeparator: { $0 == "\t" || $0 == " " }).last.flatMap({ pid_t($0) }),
              let fields = HostEnvironment.procStatFields("/proc/\(pid)/stat") else { return nil }
        guard fields.count > 19, fields[0] != "Z", fields[0] != "X", let start = UInt64(fields[19]) else { return nil }
        return TrackedProcess(hostPID: pid, nsPID: ns, startTime: start)
    }
}

/// Finds a container's processes through its cgroup: cgroup.procs of the container's
/// cgroup and of every cgroup below it, in every hierarchy it has (v1 controllers and/or
/// cgroup2), so a process moved into a sub-cgroup is still found.
public enum ContainerProcesses {
    public static func hostPIDs(cgroupDirectories: [String]) -> [pid_t] {
        var pids = Set<pid_t>()
        func walk(_ dir: String, depth: Int) {
            for line in (HostEnvironment.read(dir + "/cgroup.procs") ?? "").split(separator: "\n") {
                if let pid = pid_t(line) { pids.insert(pid) }
            }
            guard depth < 32, let children = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return }
            for child in children {
                var isDir: ObjCBool = false
                let path = dir + "/" + child
                if FileManager.default.fileExists(atPath: path, isDirectory: &isDir), isDir.boolValue {
                    walk(path, depth: depth + 1)
                }
            }
        }
        for dir in cgroupDirectories { walk(dir, depth: 0) }
        return pids.sorted()
    }

    public static func list(cgroup: Cgroup) -> [TrackedProcess] {
        hostPIDs(cgroupDirectories: cgroup.directories).compactMap { TrackedProcess.of(hostPID: $0) }
    }
}
