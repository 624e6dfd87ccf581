import Foundation
import GodwitCore

/// What would make CRIU refuse to dump a running container right now, found by reading
/// /proc the way CRIU does, before anyone tries a move (`godwit check NAME`). Each finding
/// carries the line CRIU would print, so a user can match it with a dump log.
///
/// Covered: nested namespaces CRIU 4.2 can't dump (criu/namespaces.c dumps nested mount
/// and net namespaces only), mounts of file systems CRIU doesn't know (criu/filesystems.c),
/// and ramfs mounts that hold files (Godwit lets CRIU re-create ramfs, empty: see
/// DumpOptions). Not covered: everything CRIU only finds out while dumping (external unix
/// sockets, unsupported file descriptors).
public enum CheckpointReadiness {
    public struct Blocker: Codable, Sendable, Equatable {
        /// "namespace", "mount" or "ramfs".
        public var kind: String
        /// Host pid and command of the task concerned.
        public var pid: Int32
        public var command: String
        public var detail: String
        public var criuLine: String
    }

    /// File systems CRIU 4.2 dumps (criu/filesystems.c), plus ramfs, which Godwit enables.
    static let dumpable: Set<String> = [
        "proc", "sysfs", "devtmpfs", "binfmt_misc", "tmpfs", "devpts", "simfs", "btrfs", "pstore", "mqueue",
        "securityfs", "fusectl", "debugfs", "tracefs", "cgroup", "cgroup2", "aufs", "fuse", "overlay", "autofs", "ramfs",
    ]
    /// Nested namespaces CRIU dumps; any other kind nested in the container fails the dump.
    static let nestable: Set<String> = ["mnt", "net"]
    static let kinds = ["uts", "ipc", "user", "pid", "cgroup", "mnt", "net"]

    public static func blockers(initPID: pid_t, tasks: [pid_t]) -> [Blocker] {
        var found: [Blocker] = []
        let initNS = namespaces(of: initPID)
        var mountNamespaces: [String: pid_t] = [:]
        for pid in Set(tasks + [initPID]).sorted() {
            let ns = namespaces(of: pid)
            guard !ns.isEmpty else { continue }  // exited meanwhile
            for kind in kinds where !nestable.contains(kind) {
                if let mine = ns[kind], let root = initNS[kind], mine != root {
                    found.append(Blocker(kind: "namespace", pid: pid, command: command(of: pid),
                                         detail: "runs in a \(kind) namespace of its own",
                                         criuLine: "Can't dump nested \(kind) namespace for \(pid)"))
                }
            }
            if let mnt = ns["mnt"], mountNamespaces[mnt] == nil { mountNamespaces[mnt] = pid }
        }
        for (_, pid) in mountNamespaces.sorted(by: { $0.value < $1.value }) {
            found += mountBlockers(pid: pid)
        }
        return found
    }

    static func mountBlockers(pid: pid_t) -> [Blocker] {
        guard let text = HostEnvironment.read("/proc/\(pid)/mountinfo") else { return [] }
        var found: [Blocker] = []
        for (index, entry) in MountInfo.parse(text).enumerated() {
            // The first entry is the container's root (a bind of the rootfs): CRIU takes it
            // from --root on restore whatever its type.
            guard index > 0 else { continue }
            if !dumpable.contains(entry.fsType) {
                found.append(Blocker(kind: "mount", pid: pid, command: command(of: pid),
                                     detail: "\(entry.fsType) mounted on \(entry.mountPoint)",
                                     criuLine: "FS mnt .\(entry.mountPoint) ... root \(entry.root) unsupported"))
            } else if entry.fsType == "ramfs" {
                // Read through the task's root, as root: systemd's credential dirs are 0500.
                let path = "/proc/\(pid)/root" + entry.mountPoint
                let files = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
                if !files.isEmpty {
                    found.append(Blocker(kind: "ramfs", pid: pid, command: command(of: pid),
                                         detail: "ramfs on \(entry.mountPoint) holds \(files.count) file(s); it would come back empty",
                                         criuLine: "(none: CRIU re-creates a ramfs empty with --enable-fs ramfs)"))
                }
            }
        }
        return found
    }

    /// Namespace kind -> "kind:[inode]" as the /proc links read.
    static func namespaces(of pid: pid_t) -> [String: String] {
        var out: [String: String] = [:]
        for kind in kinds {
            if let link = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/\(kind)") {
                out[kind] = link
            }
        }
        return out
    }

    static func command(of pid: pid_t) -> String {
        (HostEnvironment.read("/proc/\(pid)/comm") ?? "?").trimmingCharacters(in: .whitespacesAndNewlines)
    }
}
