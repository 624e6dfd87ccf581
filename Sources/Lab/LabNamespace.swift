import Foundation
import GodwitCore

/// Named network namespaces (the /run/netns bind mounts `ip netns` manages).
public enum LabNamespace {
    public static let directory = "/run/netns"

    public static func path(_ name: String) -> String { directory + "/" + name }

    /// argv prefix that runs a program in the namespace. nsenter rather than
    /// `ip netns exec`, which remounts /sys in a new mount namespace.
    public static func enter(_ name: String) -> [String] {
        ["nsenter", "--net=" + path(name)]
    }

    public static func list() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    public static func exists(_ name: String) -> Bool {
        FileManager.default.fileExists(atPath: path(name))
    }

    public static func add(_ name: String) throws {
        try Command.check(["ip", "netns", "add", name], hint: "is iproute2 installed and are you root?")
    }

    /// Kills what still runs in the namespace (a dead lab's sinks, daemons started outside
    /// a cgroup), then removes the name. The kernel frees the namespace, and with it every
    /// veth and bridge inside, once nothing references it.
    public static func delete(_ name: String) throws {
        for pid in pids(name) where pid != getpid() {
            kill(pid, SIGKILL)
        }
        let result = try Command.run(["ip", "netns", "delete", name])
        if !result.succeeded && exists(name) {
            throw GodwitError("cannot delete network namespace \(name): \(result.lastErrorLine)",
                              hint: "check `ip netns pids \(name)` and `findmnt \(path(name))`, then run `ip netns delete \(name)`")
        }
    }

    public static func pids(_ name: String) -> [pid_t] {
        guard let result = try? Command.run(["ip", "netns", "pids", name]), result.succeeded else { return [] }
        return result.stdout.split(whereSeparator: \.isNewline).compactMap { pid_t(String($0)) }
    }

    /// Runs argv inside the namespace; a failure names the namespace.
    @discardableResult
    public static func check(_ name: String, _ argv: [String], hint: String? = nil) throws -> CommandResult {
        do {
            return try Command.check(enter(name) + argv, hint: hint)
        } catch let error as GodwitError {
            throw error.with("netns", name)
        }
    }

    public static func run(_ name: String, _ argv: [String]) throws -> CommandResult {
        try Command.run(enter(name) + argv)
    }
}
