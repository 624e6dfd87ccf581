/// One line of /proc/self/mountinfo: "id parent maj:min root mountpoint opts [tags] - fstype source superopts".
public struct MountEntry: Sendable, Equatable {
    public var root: String
    public var mountPoint: String
    public var fsType: String
    public var superOptions: [String]
}

/// The mount table. Cgroup discovery and cleanup of a state directory's mounts both read it.
public enum MountInfo {
    public static func current() -> [MountEntry] {
        parse(HostEnvironment.read("/proc/self/mountinfo") ?? "")
    }

    public static func parse(_ text: String) -> [MountEntry] {
        text.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ").map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, fields.count >= dash + 4 else { return nil }
            return MountEntry(root: unescape(fields[3]), mountPoint: unescape(fields[4]), fsType: fields[dash + 1],
                              superOptions: fields[dash + 3].split(separator: ",").map(String.init))
        }
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    public static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var bytes: [UInt8] = []
        let chars = Array(field.utf8)
        var i = 0
        while i < chars.count {
            if chars[i] == UInt8(ascii: "\\"), i + 4 <= chars.count,
               let value = UInt8(String(decoding: chars[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                bytes.append(value)
                i += 4
            } else {
                bytes.append(chars[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
