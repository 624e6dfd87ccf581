import Foundation
import GodwitCore

/// An unprivileged container's /dev/null, zero, full, random, urandom and tty are binds of
/// the host's nodes (a user namespace may not mknod, and a node on its own tmpfs doesn't
/// open). To CRIU they are mounts from outside the container: named on dump, and bound
/// again from this host's /dev on restore, as LXC does for its unprivileged containers.
enum ExternalDevices {
    static let nodes = ["null", "zero", "full", "random", "urandom", "tty"]

    static func key(_ node: String) -> String { "godwit-dev-" + node }

    /// `--external mnt[/dev/X]:KEY` for each node bind-mounted in the container's mount
    /// namespace (none for a privileged container, whose nodes are its own).
    static func dumpArguments(pid: Int32) -> [String] {
        guard let text = HostEnvironment.read("/proc/\(pid)/mountinfo") else { return [] }
        let points = Set(MountInfo.parse(text).map(\.mountPoint))
        return nodes.filter { points.contains("/dev/" + $0) }.flatMap { ["--external", "mnt[/dev/\($0)]:\(key($0))"] }
    }

    /// `--external mnt[KEY]:/dev/X` for every node.
    static var restoreArguments: [String] {
        nodes.flatMap { ["--external", "mnt[\(key($0))]:/dev/\($0)"] }
    }
}
