import Foundation
import GodwitCore

/// The container's cgroup tree, kept beside CRIU's images. CRIU only dumps the cgroups its
/// tasks are in (and what lies below them); the empty ones systemd keeps for its slices and
/// stopped units (system-getty.slice...) are not restored, and systemd's inotify watches on
/// their `cgroup.events` then fail the restore ("fsnotify: Unable to open ..."). The dump
/// side records every sub-cgroup per hierarchy; the restore side recreates them below the
/// container's cgroup before CRIU starts.
///
/// The file crosses hosts: its reader bounds its size and the number of paths, and refuses
/// any path that is absolute or climbs.
public enum CgroupTree {
    public static let fileName = "godwit-cgroups.json"
    static let maxBytes = 4 << 20
    static let maxPaths = 10_000

    /// hierarchy name -> sub-cgroup paths relative to the container's cgroup.
    typealias Tree = [String: [String]]

    /// Writes the tree of `cgroup` into `imagesDirectory`. Call with the tasks frozen.
    public static func record(_ cgroup: Cgroup, into imagesDirectory: String) throws {
        var tree: Tree = [:]
        for (name, dir) in cgroup.namedDirectories {
            let subs = Cgroup.subdirectories(of: dir, limit: maxPaths)
            if !subs.isEmpty { tree[name] = subs }
        }
        let data = try JSONEncoder().encode(tree)
        let path = imagesDirectory + "/" + fileName
        guard FileManager.default.createFile(atPath: path, contents: data, attributes: [.posixPermissions: 0o600]) else {
            throw GodwitError("cannot write \(path)")
        }
    }

    /// Recreates below `cgroup` what `record` wrote; a missing file (images from before this
    /// existed, a container without sub-cgroups) is nothing to do. Hierarchies this host
    /// lacks are skipped.
    public static func recreate(below cgroup: Cgroup, from imagesDirectory: String) throws {
        let path = imagesDirectory + "/" + fileName
        guard let data = FileManager.default.contents(atPath: path) else { return }
        let tree = try decode(data)
        let here = Dictionary(cgroup.namedDirectories.map { ($0.name, $0.directory) }, uniquingKeysWith: { a, _ in a })
        for (name, subs) in tree {
            guard let dir = here[name] else { continue }
            for sub in subs { try cgroup.createSubcgroup(sub, in: dir) }
        }
    }

    static func decode(_ data: Data) throws -> Tree {
        guard data.count <= maxBytes else { throw GodwitError("\(fileName) is \(data.count) bytes, more than \(maxBytes)") }
        let tree: Tree
        do { tree = try JSONDecoder().decode(Tree.self, from: data) } catch {
            throw GodwitError("\(fileName) is not a cgroup tree: \(error)")
        }
        guard tree.count <= 64, tree.values.reduce(0, { $0 + $1.count }) <= maxPaths else {
            throw GodwitError("\(fileName) lists too many cgroups")
        }
        for (name, subs) in tree {
            guard !name.isEmpty, name.count <= 64, !name.contains("/") else { throw GodwitError("\(fileName): bad hierarchy name") }
            for sub in subs {
                let parts = sub.split(separator: "/", omittingEmptySubsequences: false)
                guard !sub.isEmpty, sub.utf8.count <= 4096, !sub.hasPrefix("/"), !sub.contains("\0"),
                      parts.allSatisfy({ !$0.isEmpty && $0 != "." && $0 != ".." }) else {
                    throw GodwitError("\(fileName): refused cgroup path '\(sub.prefix(200))'")
                }
            }
        }
        return tree
    }
}
