import Foundation
import GodwitCore

/// How cgroups are mounted on this host. Hybrid hosts (v1 controllers under
/// /sys/fs/cgroup/<ctrl>, cgroup2 at /sys/fs/cgroup/unified, v1 freezer) and pure v2
/// hosts (everything at /sys/fs/cgroup) both occur; code asks the layout, never assumes.
public struct CgroupLayout: Codable, Sendable, Equatable {
    public enum Kind: String, Codable, Sendable { case v1, v2, hybrid, none }

    public var kind: Kind {
        switch (v1.isEmpty, unified == nil) {
        case (false, false): .hybrid
        case (false, true): .v1
        case (true, false): .v2
        case (true, true): .none
        }
    }

    /// Where freezing happens: the v1 freezer hierarchy, or cgroup2's cgroup.freeze.
    public var freezerDescription: String {
        if let freezer = v1["freezer"] { return "v1 at \(freezer)" }
        return "cgroup2 cgroup.freeze under \(unified ?? "?")"
    }

    /// v1 controller name -> mount directory of its hierarchy.
    public var v1: [String: String]
    /// The cgroup2 mount, if any.
    public var unified: String?

    public init(v1: [String: String], unified: String?) {
        self.v1 = v1
        self.unified = unified
    }

    /// Reads the mount table (this process's view) rather than guessing paths.
    public static func detect(mountinfo: String? = nil) throws -> CgroupLayout {
        let layout = parse(mountinfo.map(MountInfo.parse) ?? MountInfo.current())
        guard layout.kind != .none else {
            throw GodwitError("no cgroup filesystem is mounted", hint: "mount cgroup2 on /sys/fs/cgroup")
        }
        return layout
    }

    /// This host's layout; empty (kind .none) when no cgroup filesystem is mounted.
    public static func current() -> CgroupLayout { parse(MountInfo.current()) }

    static func parse(_ mounts: [MountEntry]) -> CgroupLayout {
        var v1: [String: String] = [:]
        var unified: String?
        // A cgroup mount whose root is not "/" shows a sub-tree (e.g. inside a cgroupns).
        for mount in mounts where mount.root == "/" {
            if mount.fsType == "cgroup2", unified == nil {
                unified = mount.mountPoint
            } else if mount.fsType == "cgroup" {
                // Named hierarchies (name=systemd) carry no controller but CRIU dumps the
                // container's place in them too, so they are kept under their "name=..." key.
                for option in mount.superOptions where option != "rw" && option != "ro"
                    && (!option.contains("=") || option.hasPrefix("name=")) && v1[option] == nil {
                    v1[option] = mount.mountPoint
                }
            }
        }
        return CgroupLayout(v1: v1, unified: unified)
    }

    /// The same layout with only the given v1 controllers (cgroup2 unchanged).
    public func restricted(to controllers: [String]) -> CgroupLayout {
        CgroupLayout(v1: v1.filter { controllers.contains($0.key) }, unified: unified)
    }

    /// Every hierarchy root, each once (cpu and cpuacct may be co-mounted).
    public var mountPoints: [String] {
        Array(Set(v1.values)).sorted() + (unified.map { [$0] } ?? [])
    }
}

/// One container's cgroup (or a parent of containers), the same relative path in every
/// hierarchy Godwit uses.
public struct Cgroup: Codable, Sendable, Equatable {
    /// Relative to each hierarchy's root, e.g. "godwit-LAB-h1/web".
    public let path: String
    public let layout: CgroupLayout

    public init(path: String, layout: CgroupLayout) {
        self.path = path.split(separator: "/").joined(separator: "/")
        self.layout = layout
    }

    /// Every directory the container's processes join: one in EVERY v1 hierarchy (named
    /// ones included), plus the cgroup2 one. A container left in a root cgroup of some
    /// hierarchy can't be restored under another host's --cgroup-root: CRIU would try to
    /// recreate the root's properties (cpuset's cpu_exclusive) and copy the host's whole
    /// tree (name=systemd) below the new root.
    public var directories: [String] {
        layout.mountPoints.map { $0 + "/" + path }
    }

    /// Where `controller`'s files are: its v1 hierarchy, or cgroup2 when it is not on v1.
    public func directory(for controller: String) -> String? {
        if let mount = layout.v1[controller] { return mount + "/" + path }
        return layout.unified.map { $0 + "/" + path }
    }

    public var exists: Bool { directories.contains { FileManager.default.fileExists(atPath: $0) } }

    public func create() throws {
        if let unified = layout.unified { try enableControllers(unifiedRoot: unified) }
        for root in layout.mountPoints {
            var dir = root
            for component in path.split(separator: "/") {
                dir += "/" + component
                guard !FileManager.default.fileExists(atPath: dir) else { continue }
                do {
                    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
                } catch {
                    throw GodwitError("cannot create cgroup \(dir): \(error.localizedDescription)",
                                      hint: "cgroups need root and a writable cgroup filesystem")
                }
                try inheritCpuset(dir)
            }
        }
    }

    /// A new v1 cpuset starts with no CPUs and no memory nodes, so nothing could join it
    /// (ENOSPC) unless the parent set clone_children: copy the parent's.
    private func inheritCpuset(_ dir: String) throws {
        let parent = (dir as NSString).deletingLastPathComponent
        for file in ["cpuset.cpus", "cpuset.mems"] where FileManager.default.fileExists(atPath: dir + "/" + file) {
            if (HostEnvironment.read(dir + "/" + file) ?? "").isEmpty, let value = HostEnvironment.read(parent + "/" + file) {
                try write(value, to: dir + "/" + file)
            }
        }
    }

    /// cgroup2 only hands a controller to a child when every ancestor lists it in
    /// cgroup.subtree_control; on hybrid hosts the controllers are on v1 and this is a no-op.
    private func enableControllers(unifiedRoot: String) throws {
        let wanted = ["memory", "pids", "cpu"].filter { layout.v1[$0] == nil }
        var dir = unifiedRoot
        for component in path.split(separator: "/").dropLast().map(String.init) + [""] {
            let available = (HostEnvironment.read(dir + "/cgroup.controllers") ?? "").split(separator: " ").map(String.init)
            let enabled = (HostEnvironment.read(dir + "/cgroup.subtree_control") ?? "").split(separator: " ").map(String.init)
            for controller in wanted where available.contains(controller) && !enabled.contains(controller) {
                do {
                    try write("+" + controller, to: dir + "/cgroup.subtree_control")
                } catch var error as GodwitError {
                    error.hint = "cgroup v2 can't hand controllers down from a cgroup that holds processes: "
                        + "run the daemon in a leaf cgroup, not in \(dir)"
                    throw error
                }
            }
            if component.isEmpty { break }
            dir += "/" + component
            try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: false)
        }
    }

    /// The first of the cgroup's directories holding `name` (memory.max, pids.max...), read.
    public func read(_ name: String) -> String? {
        for dir in directories {
            if let value = HostEnvironment.read(dir + "/" + name) { return value }
        }
        return nil
    }

    /// Host pids of every process in the cgroup and its sub-cgroups (a systemd container
    /// keeps its services in slices of its own), from all hierarchies.
    public func processes() -> [pid_t] {
        var pids = Set<pid_t>()
        for dir in directories {
            for sub in [""] + Self.subdirectories(of: dir) {
                for line in (HostEnvironment.read(dir + "/" + sub + "/cgroup.procs") ?? "").split(separator: "\n") {
                    if let pid = pid_t(line) { pids.insert(pid) }
                }
            }
        }
        return pids.sorted()
    }

    /// Paths of every cgroup below `dir`, relative, parents before children.
    public static func subdirectories(of dir: String, limit: Int = 10_000) -> [String] {
        var found: [String] = []
        var queue = [""]
        while let next = queue.first, found.count < limit {
            queue.removeFirst()
            let here = next.isEmpty ? dir : dir + "/" + next
            for child in ((try? FileManager.default.contentsOfDirectory(atPath: here)) ?? []).sorted() {
                var isDirectory: ObjCBool = false
                let rel = next.isEmpty ? child : next + "/" + child
                guard FileManager.default.fileExists(atPath: dir + "/" + rel, isDirectory: &isDirectory),
                      isDirectory.boolValue else { continue }
                found.append(rel)
                queue.append(rel)
            }
        }
        return found
    }

    /// The hierarchies by name ("unified" for cgroup2, else the v1 key such as "memory" or
    /// "name=systemd") with this cgroup's directory in each.
    public var namedDirectories: [(name: String, directory: String)] {
        var seen = Set<String>()
        var out: [(String, String)] = []
        for (name, mount) in layout.v1.sorted(by: { $0.key < $1.key }) where seen.insert(mount).inserted {
            out.append((name, mount + "/" + path))
        }
        if let unified = layout.unified { out.append(("unified", unified + "/" + path)) }
        return out
    }

    /// Creates `relative` below this cgroup in the hierarchy at `directory` (parents first),
    /// giving new cpusets their parent's CPUs and memory nodes.
    public func createSubcgroup(_ relative: String, in directory: String) throws {
        var dir = directory
        for component in relative.split(separator: "/") {
            guard component != "..", component != "." else { throw GodwitError("invalid cgroup path \(relative)") }
            dir += "/" + component
            if FileManager.default.fileExists(atPath: dir) { continue }
            guard mkdir(dir, 0o755) == 0 || errno == EEXIST else { throw GodwitError.errno("mkdir cgroup \(dir)") }
            try inheritCpuset(dir)
        }
    }

    /// Every task of the cgroup is frozen (by us or by CRIU's --freeze-cgroup).
    public var isFrozen: Bool { freezerReports(frozen: true) }

    /// The freezer says the cgroup reached this state (v1: FROZEN/THAWED, not FREEZING).
    private func freezerReports(frozen: Bool) -> Bool {
        if let mount = layout.v1["freezer"] {
            return HostEnvironment.read(mount + "/" + path + "/freezer.state") == (frozen ? "FROZEN" : "THAWED")
        }
        if let unified = layout.unified {
            return (HostEnvironment.read(unified + "/" + path + "/cgroup.events") ?? "").contains(frozen ? "frozen 1" : "frozen 0")
        }
        return false
    }

    public func freeze(timeout: TimeInterval = 5) throws { try setFrozen(true, timeout: timeout) }
    public func thaw(timeout: TimeInterval = 5) throws { try setFrozen(false, timeout: timeout) }

    private func setFrozen(_ frozen: Bool, timeout: TimeInterval) throws {
        if let mount = layout.v1["freezer"] {
            try write(frozen ? "FROZEN" : "THAWED", to: mount + "/" + path + "/freezer.state")
        } else if let unified = layout.unified {
            try write(frozen ? "1" : "0", to: unified + "/" + path + "/cgroup.freeze")
        } else {
            throw GodwitError("this host has no cgroup freezer")
        }
        guard poll(timeout: timeout, { freezerReports(frozen: frozen) }) else {
            throw GodwitError("cgroup \(path) did not become \(frozen ? "frozen" : "thawed") within \(timeout) s")
        }
    }

    /// SIGKILLs everything in the cgroup and waits until it is empty.
    public func kill(timeout: TimeInterval = 5) throws {
        if let unified = layout.unified, FileManager.default.fileExists(atPath: unified + "/" + path + "/cgroup.kill") {
            try? write("1", to: unified + "/" + path + "/cgroup.kill")
        }
        // Also by pid: cgroup.kill is Linux 5.14+, and a process CRIU restored may sit in
        // the v1 hierarchies only.
        var thawed = false
        let empty = poll(timeout: timeout) {
            let pids = processes()
            for pid in pids { _ = Glibc.kill(pid, SIGKILL) }
            // v1-frozen tasks only act on the SIGKILL once thawed.
            if !pids.isEmpty && !thawed {
                thawed = true
                try? thaw()
            }
            return pids.isEmpty
        }
        guard empty else {
            throw GodwitError("cgroup \(path) still has processes \(processes()) after SIGKILL")
        }
    }

    /// Removes the cgroup in every hierarchy; fine if it is already gone.
    /// Removes the cgroup from every hierarchy, sub-cgroups first (a container may make
    /// its own; CRIU's --manage-cgroups=full recreates them on restore).
    public func remove(timeout: TimeInterval = 5) throws {
        func removeTree(_ dir: String) throws {
            for child in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: dir + "/" + child, isDirectory: &isDirectory), isDirectory.boolValue {
                    try removeTree(dir + "/" + child)
                }
            }
            var lastError: Int32 = 0
            // rmdir fails with EBUSY for a moment after the last process exited.
            let removed = poll(timeout: timeout) {
                if rmdir(dir) == 0 || errno == ENOENT { return true }
                lastError = errno
                return false
            }
            if !removed {
                throw GodwitError.errno("rmdir \(dir)", lastError, hint: "does it still hold processes?")
            }
        }
        for dir in directories { try removeTree(dir) }
    }

    public func file(_ name: String, of controller: String) throws -> String {
        guard let dir = directory(for: controller) else {
            throw GodwitError("the \(controller) cgroup controller is not available on this host")
        }
        return dir + "/" + name
    }

    public func write(_ value: String, to file: String) throws {
        let fd = open(file, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GodwitError.errno("open \(file)") }
        defer { close(fd) }
        let written = value.withCString { Glibc.write(fd, $0, strlen($0)) }
        guard written >= 0 else { throw GodwitError.errno("write \"\(value)\" to \(file)") }
    }
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes; true if it held.
public func poll(timeout: TimeInterval, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
        if condition() { return true }
        if Date() >= deadline { return false }
        usleep(10_000)
    }
}
