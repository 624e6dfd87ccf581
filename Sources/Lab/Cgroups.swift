import Foundation
import GodwitCore

extension CgroupLayout {
    /// A lab host gets a cgroup in every hierarchy, because its containers have one in each
    /// (see Cgroup.directories) and must be found and removed by `lab down`.
    public static func lab() -> CgroupLayout { current() }

    /// The directories named `name` directly under each hierarchy root.
    public func directories(named name: String) -> HostCgroups {
        HostCgroups(name: name, v1: v1.mapValues { $0 + "/" + name }, unified: unified.map { $0 + "/" + name })
    }
}

/// Creates and removes lab hosts' cgroups.
public enum LabCgroups {
    public static func create(_ cgroups: HostCgroups) throws {
        for (controller, directory) in cgroups.v1.sorted(by: { $0.key < $1.key }) {
            try makeDirectory(directory)
            if controller == "cpuset" {
                // A new v1 cpuset starts with no CPUs and no memory nodes: nothing could run in it.
                let parent = (directory as NSString).deletingLastPathComponent
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = HostEnvironment.read(parent + "/" + file) ?? ""
                    try writeControl(directory + "/" + file, value)
                }
                // ...and so would every container cgroup below; this makes them copy ours.
                try writeControl(directory + "/cgroup.clone_children", "1")
            }
        }
        if let unified = cgroups.unified {
            try makeDirectory(unified)
            // Pass on what our parent delegates, so containers below get the controllers. On
            // hybrid hosts this list is empty (the controllers live in v1). The host cgroup itself
            // then must hold no processes (v2's no-internal-process rule): daemons go in a child.
            let parent = (unified as NSString).deletingLastPathComponent
            let delegated = (HostEnvironment.read(parent + "/cgroup.subtree_control") ?? "").split(separator: " ")
            for controller in delegated {
                try? writeControl(unified + "/cgroup.subtree_control", "+\(controller)")
            }
        }
    }

    /// Host cgroups of `lab` that exist now, found by name in every hierarchy.
    public static func existing(of lab: LabName, in hierarchies: CgroupLayout = .lab()) -> [String] {
        hierarchies.mountPoints.flatMap { root -> [String] in
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []
            return entries.filter { isHostCgroup($0, of: lab) }.sorted().map { root + "/" + $0 }
        }
    }

    public static func isHostCgroup(_ directoryName: String, of lab: LabName) -> Bool {
        directoryName.hasPrefix(lab.netnsPrefix)
            && LabHost.index(of: String(directoryName.dropFirst(lab.netnsPrefix.count))) != nil
    }

    /// Kills everything in the lab's cgroups (thawing frozen ones first, since a frozen v1
    /// task can't act on SIGKILL) and removes them deepest first. Returns what it removed.
    @discardableResult
    public static func remove(lab: LabName, hierarchies: CgroupLayout = .lab()) throws -> [String] {
        let tops = existing(of: lab, in: hierarchies)
        let trees = tops.map { subtree($0) }
        let all = trees.flatMap { $0 }
        for directory in all {
            if FileManager.default.fileExists(atPath: directory + "/freezer.state") {
                try? writeControl(directory + "/freezer.state", "THAWED")
            }
            if FileManager.default.fileExists(atPath: directory + "/cgroup.freeze") {
                try? writeControl(directory + "/cgroup.freeze", "0")
            }
        }
        for top in tops where FileManager.default.fileExists(atPath: top + "/cgroup.kill") {
            try? writeControl(top + "/cgroup.kill", "1")
        }
        try killAll(in: all)
        var removed: [String] = []
        for directory in trees.flatMap({ $0.reversed() }) {
            try removeDirectory(directory)
            removed.append(directory)
        }
        return removed
    }

    /// Pre-order list of a cgroup directory and its descendants.
    static func subtree(_ directory: String) -> [String] {
        var result = [directory]
        let entries = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
        for entry in entries {
            var isDirectory: ObjCBool = false
            let path = directory + "/" + entry
            if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
                result += subtree(path)
            }
        }
        return result
    }

    static func processes(in directory: String) -> [pid_t] {
        (HostEnvironment.read(directory + "/cgroup.procs") ?? "").split(separator: "\n").compactMap { pid_t(String($0)) }
    }

    /// Repeats until empty: a process may fork between our reading cgroup.procs and killing it.
    static func killAll(in directories: [String]) throws {
        let deadline = Date().addingTimeInterval(5)
        while true {
            let pids = Set(directories.flatMap { processes(in: $0) }).subtracting([getpid()])
            if pids.isEmpty { return }
            if Date() > deadline {
                throw GodwitError("processes \(pids.sorted().map(String.init).joined(separator: " ")) survived SIGKILL in the lab's cgroups",
                                  hint: "they may be stuck in the kernel (state D); check `ps -o pid,stat,wchan -p <pid>` and retry `godwit lab down`")
            }
            for pid in pids { kill(pid, SIGKILL) }
            usleep(50_000)
        }
    }

    static func makeDirectory(_ path: String) throws {
        if mkdir(path, 0o755) != 0 && errno != EEXIST {
            throw GodwitError.errno("mkdir \(path)", hint: "is the cgroup hierarchy writable (root, not in a read-only container)?")
        }
    }

    /// rmdir on a cgroup fails with EBUSY for a moment after its last task was killed.
    static func removeDirectory(_ path: String) throws {
        let deadline = Date().addingTimeInterval(3)
        while rmdir(path) != 0 {
            let code = errno
            if code == ENOENT { return }
            if code != EBUSY || Date() > deadline {
                throw GodwitError.errno("rmdir \(path)", code,
                                        hint: "something still uses the cgroup; see \(path)/cgroup.procs, then retry `godwit lab down`")
            }
            usleep(50_000)
        }
    }

    /// Writes a cgroup control file with one write(2), as the kernel expects.
    static func writeControl(_ path: String, _ value: String) throws {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GodwitError.errno("open \(path)") }
        defer { close(fd) }
        let bytes = Array(value.utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        if written != bytes.count {
            throw GodwitError.errno("write '\(value)' to \(path)")
        }
    }
}

/// Whatever later work mounted under a lab's state directory is unmounted before deleting
/// it (deleting through a bind mount would delete its source).
public enum LabMounts {
    public static func mountPoints(under directory: String) -> [String] {
        MountInfo.current().map(\.mountPoint).filter { $0 == directory || $0.hasPrefix(directory + "/") }
    }

    /// Unmounts (lazily) everything at or below `directory`, deepest first.
    public static func unmountAll(under directory: String) throws {
        for mountPoint in mountPoints(under: directory).sorted(by: { $0.count > $1.count }) {
            if umount2(mountPoint, Int32(MNT_DETACH)) != 0 && errno != EINVAL && errno != ENOENT {
                throw GodwitError.errno("umount \(mountPoint)", hint: "unmount it by hand (`umount -l \(mountPoint)`), then retry")
            }
        }
    }
}
