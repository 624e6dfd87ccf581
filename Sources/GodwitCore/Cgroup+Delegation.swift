import Foundation

extension Cgroup {
    /// The files of a cgroup that its delegate writes to move processes and enable
    /// controllers below it (cgroup v2's delegation model; `tasks` is v1's procs). The
    /// cgroup's own limits (memory.max, pids.max) stay root's: the container can't lift them.
    static let delegatedFiles = ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control", "tasks"]

    /// Hands the cgroup and every cgroup below it to `uid` (an unprivileged container's
    /// root on the host), in cgroup2 and in named v1 hierarchies (name=systemd), which is
    /// what systemd inside manages. v1 controller hierarchies are never delegated: there a
    /// writable directory would let the container rewrite its own limits.
    public func delegate(to uid: UInt32) throws {
        var roots: [String] = layout.unified.map { [$0 + "/" + path] } ?? []
        roots += layout.v1.filter { $0.key.hasPrefix("name=") }.map { $0.value + "/" + path }
        for root in roots where FileManager.default.fileExists(atPath: root) {
            for dir in [root] + Self.subdirectories(of: root).map({ root + "/" + $0 }) {
                for entry in [dir] + Self.delegatedFiles.map({ dir + "/" + $0 }) {
                    guard chown(entry, uid, uid) == 0 || errno == ENOENT else {
                        throw GodwitError.errno("chown \(entry) to \(uid)", hint: "cgroups need root and a writable cgroup filesystem")
                    }
                }
            }
        }
    }
}
