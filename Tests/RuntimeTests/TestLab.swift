import Foundation
import GodwitCore
@testable import Runtime

/// One test's private world: a network namespace with a bridge (10.77.0.1/24), a busybox
/// image, a state directory and a cgroup parent, all with a random suffix so tests can
/// run side by side and never touch anything they did not make.
final class TestLab {
    let suffix: String
    let netnsName: String
    let bridge: String
    let directory: String
    let image: String
    let runtime: ContainerRuntime
    var netns: NetworkNamespace { .named(netnsName) }
    static let gateway = "10.77.0.1"

    init() throws {
        suffix = String(UInt32.random(in: 0...UInt32.max), radix: 16)
        netnsName = "gwrt-" + suffix
        bridge = "gwbr" + suffix
        directory = "/tmp/godwit-rt-" + suffix
        image = directory + "/image"
        try Command.check(["ip", "netns", "add", netnsName])
        let runtime: ContainerRuntime
        do {
            try Command.check(["nsenter", "--net=/run/netns/" + netnsName, "ip", "-batch", "-"], input: """
                link set lo up
                link add \(bridge) type bridge
                addr add \(Self.gateway)/24 dev \(bridge)
                link set \(bridge) up

                """)
            try Self.makeBusyboxImage(at: image)
            runtime = try ContainerRuntime(RuntimeConfiguration(
                stateRoot: directory + "/containers", cgroupParent: "godwit-test-" + suffix,
                hostNetwork: .named(netnsName)))
        } catch {
            _ = try? Command.run(["ip", "netns", "del", netnsName])
            throw error
        }
        self.runtime = runtime
    }

    /// Removes the namespace, the cgroup parent and the files. Containers must be
    /// destroyed first (the cgroup parent can't go while it has children).
    func cleanUp() {
        _ = try? Command.run(["ip", "netns", "del", netnsName])
        try? runtime.cgroup(for: "").remove()
        _ = try? Command.run(["rm", "-rf", "--one-file-system", directory])
    }

    func spec(_ base: String = "ct", ip: String = "10.77.0.2/24", command: [String]? = nil,
              limits: ResourceLimits = ResourceLimits()) throws -> ContainerSpec {
        try ContainerSpec(
            name: "\(base)-\(suffix)", image: image, hostname: base,
            initCommand: command ?? ["/bin/sh", "-c", "trap 'exit 0' TERM; while true; do sleep 0.2; done"],
            environment: ["HOME": "/root"],
            network: NetworkSpec(bridge: bridge, address: try IPv4Interface(ip), gateway: try IPv4Address(Self.gateway)),
            limits: limits)
    }

    /// Runs argv in the lab's network namespace (where the bridge is).
    @discardableResult
    func inNetns(_ argv: [String]) throws -> CommandResult {
        try Command.run(netns.wrap(argv))
    }

    /// The host's static busybox as /bin/busybox plus one symlink per applet
    /// (`busybox --install -s` would link to the host's path, not /bin/busybox).
    static func makeBusyboxImage(at path: String) throws {
        guard let busybox = Command.which("busybox") else {
            throw GodwitError("busybox not found", hint: "apt-get install -y busybox-static")
        }
        let fm = FileManager.default
        for dir in ["bin", "tmp", "root", "etc", "proc", "sys", "dev", "var/log"] {
            try fm.createDirectory(atPath: path + "/" + dir, withIntermediateDirectories: true)
        }
        try fm.copyItem(atPath: busybox, toPath: path + "/bin/busybox")
        for applet in try Command.check([busybox, "--list"]).stdout.split(separator: "\n") where applet != "busybox" {
            try? fm.createSymbolicLink(atPath: path + "/bin/" + applet, withDestinationPath: "busybox")
        }
    }
}

/// What the container's processes leave behind, looked for from the host.
func mountsMentioning(_ text: String) -> [String] {
    (HostEnvironment.read("/proc/self/mountinfo") ?? "").split(separator: "\n").map(String.init).filter { $0.contains(text) }
}

/// Polls every 50 ms; true once `condition` holds.
func eventually(_ timeout: TimeInterval = 5, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if try condition() { return true }
        usleep(50_000)
    } while Date() < deadline
    return false
}
