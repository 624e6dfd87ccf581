import Foundation

/// Facts about the machine and the current process that several modules need.
public enum HostEnvironment {
    public static var isRoot: Bool { geteuid() == 0 }

    /// Refuses early, with a hint, instead of failing halfway through with EPERM.
    public static func requireRoot(for what: String) throws {
        guard isRoot else {
            throw GodwitError("\(what) needs root (namespaces, cgroups, CRIU)",
                              hint: "run it as root, e.g. `sudo godwit ...`")
        }
    }

    /// Whether `capability` (a CAP_* number) is in this process's bounding set.
    public static func hasBoundingCapability(_ capability: Int) -> Bool {
        guard let status = read("/proc/self/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("CapBnd:") }),
              let mask = UInt64(line.split(separator: "\t").last.map(String.init) ?? "", radix: 16)
        else { return false }
        return mask & (UInt64(1) << UInt64(capability)) != 0
    }

    public static let capSysResource = 24

    /// Reads a /proc or /sys file, trimmed; nil when absent or unreadable.
    public static func read(_ path: String) -> String? {
        readBytes(path).map { String(decoding: $0, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines) }
    }

    /// The fields of a /proc/<pid>[/task/<tid>]/stat line after the command name, state
    /// first (field 3 of proc(5) is index 0 here). comm may hold spaces and parentheses, so
    /// they are counted after its LAST ')'. nil when the task is gone.
    public static func procStatFields(_ path: String) -> [Substring]? {
        guard let stat = read(path), let close = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: close)...].split(separator: " ")
    }

    /// A thread's state letter (R, S, D, T, t, Z, X…); nil when it is gone.
    public static func threadState(pid: pid_t, tid: String) -> Character? {
        procStatFields("/proc/\(pid)/task/\(tid)/stat")?.first?.first
    }

    /// Reads a file to its end with read(2). Foundation's readers stop after the first ~4 KiB
    /// of a /proc file (they trust its st_size of 0 and one read), silently truncating maps,
    /// mountinfo and smaps.
    public static func readBytes(_ path: String) -> [UInt8]? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var result: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n < 0 { return nil }
            if n == 0 { return result }
            result.append(contentsOf: chunk[0..<n])
        }
    }
}

/// Where Godwit keeps its files. The project checkout matters because `make setup`
/// provisions CRIU into `<project>/.criu` when the system's CRIU is unusable.
public enum GodwitPaths {
    /// The directory holding this executable (resolves /proc/self/exe, so symlinks work).
    public static var executableDirectory: URL {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))
            ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent()
    }

    /// The nearest ancestor of the executable that holds `relative`: a checkout's
    /// `.build/debug/godwit` finds `<checkout>/.criu/...` this way without configuration.
    public static func findUpwards(_ relative: String, from start: URL = executableDirectory) -> URL? {
        var dir = start.standardizedFileURL
        while dir.path != "/" {
            let candidate = dir.appendingPathComponent(relative)
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
            dir.deleteLastPathComponent()
        }
        return nil
    }

    /// A sibling executable built from this package (godwitd, godwit-spawn).
    public static func sibling(_ name: String) -> String {
        executableDirectory.appendingPathComponent(name).path
    }
}
