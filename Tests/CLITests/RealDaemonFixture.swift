import API
import Foundation
import GodwitCore

/// A real `godwitd` (the runtime driver: godwit-spawn, cgroups, veths, CRIU) for one test,
/// in a world of its own: a network namespace `gwacc-XXXX` holding the container bridge
/// `br0`, a state directory `/tmp/gwacc-XXXX`, and the cgroup parent `godwit-acc-XXXX`.
///
/// The bridge's namespace is also the client: it has 10.88.0.1/16 on `br0`, which is both
/// the containers' default gateway and the address pings and TCP connections come from.
/// The containers lease 10.88.1.0/24 (so their eth0 is a /24 and the gateway is outside
/// it: the runtime installs the default route `onlink`).
///
/// `tearDown()` (called by the tests' `defer`, and by `deinit` as a last resort) deletes
/// the containers through the CLI, stops the daemon, then removes whatever is left by
/// name: cgroups in every hierarchy, the namespace (and the veths in it), mounts, files.
final class RealDaemonFixture: @unchecked Sendable {
    static let bridge = "br0"
    static let bridgeAddress = "10.88.0.1"
    static let subnet = "10.88.1.0/24"
    static let gateway = "10.88.0.1"

    let suffix: String
    let netns: String
    let cgroupRoot: String
    /// The daemon's --state-dir; the daemon logs go beside it.
    let stateDir: String
    let root: String
    let memtouch: String
    /// The running godwitd's pid (our child: started with DetachedProcess, not Foundation's
    /// Process, whose exit-watch descriptor the daemon would keep; see DetachedProcess).
    private(set) var daemon: pid_t?
    private var logs: [String] = []
    private var tornDown = false

    var netnsPath: String { "/run/netns/" + netns }
    var socket: String { stateDir + "/unix.socket" }
    var containersDirectory: String { stateDir + "/containers" }

    init() throws {
        guard getuid() == 0 else {
            throw GodwitError("the container acceptance tests need root (namespaces, cgroups, CRIU)")
        }
        for tool in ["godwit", "godwitd", "godwit-spawn"] where access(Built.path(tool), X_OK) != 0 {
            throw GodwitError("\(Built.path(tool)) is not built", hint: "swift build --build-tests")
        }
        memtouch = try Self.memtouchBinary()
        suffix = String(format: "%08x", UInt32.random(in: 0...UInt32.max))
        netns = "gwacc-" + suffix
        cgroupRoot = "godwit-acc-" + suffix
        root = "/tmp/gwacc-" + suffix
        stateDir = root + "/state"
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
        do {
            try Command.check(["ip", "netns", "add", netns])
            try Command.check(["nsenter", "--net=" + netnsPath, "ip", "-batch", "-"], input: """
                link set lo up
                link add \(Self.bridge) type bridge
                addr add \(Self.bridgeAddress)/16 dev \(Self.bridge)
                link set \(Self.bridge) up

                """)
            try startDaemon()
        } catch {
            tearDown()
            throw error
        }
    }

    deinit { tearDown() }

    /// memtouch from the build directory, built by scripts/build-workloads.sh when missing.
    static func memtouchBinary() throws -> String {
        let path = Built.path("memtouch")
        if access(path, X_OK) == 0 { return path }
        let sourceRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().path
        try Command.check(["bash", sourceRoot + "/scripts/build-workloads.sh", Built.directory.path],
                          hint: "memtouch is a static C program: is a C compiler with static glibc installed?")
        return path
    }

    // MARK: the daemon

    /// Whether the daemon we started still runs (reaps it when it has exited).
    var daemonIsRunning: Bool {
        guard let pid = daemon else { return false }
        if let status = DetachedProcess.exitStatus(of: pid) {
            daemonExit = status
            daemon = nil
            return false
        }
        return true
    }
    private var daemonExit: Int32?

    /// Starts godwitd inside the namespace and waits until the CLI gets answers.
    func startDaemon() throws {
        precondition(!daemonIsRunning, "a daemon is already running")
        let log = root + "/godwitd-\(logs.count + 1).log"
        logs.append(log)
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_TESTING_FAKE_DRIVER"] = nil
        // Its namespace has no route out: image builds use the machine's network.
        environment["GODWIT_BUILD_NETNS"] = "/proc/\(getpid())/ns/net"  // this test's, which outlives the daemon
        // nsenter execs godwitd (no --fork): the pid is the daemon's.
        daemon = try DetachedProcess.spawn(
            ["nsenter", "--net=" + netnsPath, Built.path("godwitd"),
             "--state-dir", stateDir, "--name", "acc-" + suffix,
             "--bridge", Self.bridge, "--subnet", Self.subnet, "--gateway", Self.gateway,
             "--cgroup-root", cgroupRoot,
             "--busybox-extra", memtouch + ":usr/bin/memtouch"],
            log: log, environment: environment)
        daemonExit = nil
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            guard daemonIsRunning else {
                throw GodwitError("godwitd exited early (status \(daemonExit ?? -1)):\n\(logText)")
            }
            if FileManager.default.fileExists(atPath: socket), (try? godwit(["list"]).status) == 0 { return }
            usleep(100_000)
        }
        throw GodwitError("godwitd did not answer within 30 s:\n\(logText)")
    }

    /// SIGTERM, then SIGKILL after `timeout`; returns the exit status (128 + signal when a
    /// signal ended it, so not 0 when it had to be killed). Reaps the daemon.
    @discardableResult
    func stopDaemon(timeout: TimeInterval = 15) -> Int32 {
        guard let pid = daemon else { return daemonExit ?? 0 }
        defer { daemon = nil }
        let status = DetachedProcess.terminate(pid, timeout: timeout)
        daemonExit = status
        return status
    }

    /// Every daemon log of this fixture, for failure messages.
    var logText: String {
        logs.map { "== \($0)\n" + ((try? String(contentsOfFile: $0, encoding: .utf8)) ?? "") }.joined(separator: "\n")
    }

    // MARK: the CLI and the client

    /// The real CLI, pointed at this daemon with GODWIT_DIR (`--dir` belongs to each verb).
    func godwit(_ arguments: [String]) throws -> CommandResult {
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_DIR"] = stateDir
        return try Command.run([Built.path("godwit")] + arguments, environment: environment)
    }

    /// `godwit exec NAME -- sh -c SCRIPT`.
    func sh(_ name: String, _ script: String) throws -> CommandResult {
        try godwit(["exec", name, "--", "sh", "-c", script])
    }

    /// Runs argv in the bridge's namespace: the client's side of the network.
    func client(_ argv: [String]) throws -> CommandResult {
        try Command.run(["nsenter", "--net=" + netnsPath] + argv)
    }

    func containers() throws -> [ContainerInfo] {
        let result = try godwit(["list", "--format", "json"])
        guard result.succeeded else { throw GodwitError("godwit list failed: \(result.stderr)") }
        return try APICoding.decoder().decode([ContainerInfo].self, from: Data(result.stdout.utf8))
    }

    func container(_ name: String) throws -> ContainerInfo? { try containers().first { $0.name == name } }

    // MARK: what a container leaves on the host

    var cgroupLayout: CgroupLayout { CgroupLayout.current() }

    /// The container's cgroup directories that exist, in any hierarchy.
    func cgroupDirectories(of name: String) -> [String] {
        Cgroup(path: cgroupRoot + "/" + name, layout: cgroupLayout).directories
            .filter { FileManager.default.fileExists(atPath: $0) }
    }

    /// Lines of the host's mountinfo naming a path under the container's directory.
    func mounts(of name: String) -> [String] {
        let dir = containersDirectory + "/" + name
        return (HostEnvironment.read("/proc/self/mountinfo") ?? "").split(separator: "\n").map(String.init)
            .filter { $0.contains(dir + "/") || $0.contains(dir + " ") }
    }

    /// Links in the namespace whose name starts with "gw" (containers' veth host ends).
    func vethHostEnds() throws -> [String] {
        let result = try client(["ip", "-o", "link", "show"])
        return result.stdout.split(separator: "\n").compactMap { line -> String? in
            let fields = line.split(separator: ":", maxSplits: 2)
            guard fields.count >= 2 else { return nil }
            let name = fields[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init) ?? ""
            return name.hasPrefix("gw") ? name : nil
        }
    }

    // MARK: teardown

    /// Idempotent; safe after a failed init.
    func tearDown() {
        guard !tornDown else { return }
        tornDown = true
        if daemonIsRunning {
            for info in (try? containers()) ?? [] {
                _ = try? godwit(["delete", "--force", info.name])
            }
        }
        stopDaemon()
        // Whatever the daemon didn't remove: processes and cgroups first (the parent
        // can't go while it has children), then mounts, the namespace and the files.
        let layout = cgroupLayout
        let parent = Cgroup(path: cgroupRoot, layout: layout)
        var children = Set<String>()
        for dir in parent.directories {
            for child in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                var isDirectory: ObjCBool = false
                if FileManager.default.fileExists(atPath: dir + "/" + child, isDirectory: &isDirectory), isDirectory.boolValue {
                    children.insert(child)
                }
            }
        }
        for child in children {
            let cgroup = Cgroup(path: cgroupRoot + "/" + child, layout: layout)
            try? cgroup.kill()
            try? cgroup.remove()
        }
        try? parent.kill()
        try? parent.remove()
        let mounted = (HostEnvironment.read("/proc/self/mountinfo") ?? "").split(separator: "\n")
            .compactMap { $0.split(separator: " ").dropFirst(4).first.map(String.init) }
            .filter { $0.hasPrefix(root + "/") }
        for mountPoint in mounted.sorted(by: { $0.count > $1.count }) { umount2(mountPoint, Int32(MNT_DETACH)) }
        _ = try? Command.run(["ip", "netns", "del", netns])
        _ = try? Command.run(["rm", "-rf", "--one-file-system", root])
    }
}

/// Polls every 100 ms until `condition` holds; false after `timeout`. For waiting on things
/// that happen asynchronously (a report written, a line received), never for asserting speed.
func waitUntil(_ timeout: TimeInterval = 20, _ condition: () throws -> Bool) rethrows -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    repeat {
        if try condition() { return true }
        usleep(100_000)
    } while Date() < deadline
    return false
}
