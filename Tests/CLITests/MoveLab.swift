import API
import Foundation
import GodwitCore

/// A real two-host lab for move tests: `godwit lab up` (daemons with --https that trust
/// each other), driven through the real CLI. Unique name and state root; `tearDown()`
/// (from the tests' defer) runs `lab down`, which finds everything by name.
final class MoveLab: @unchecked Sendable {
    let name = LabCLITests.uniqueName()
    let stateRoot = "/tmp/gw-move-" + UUID().uuidString.prefix(8).lowercased()
    private var tornDown = false
    /// Daemons this test started itself (restarts): reaped at teardown.
    private var startedDaemons: [pid_t] = []

    init(bandwidth: String? = nil, hosts: Int = 2) throws {
        guard geteuid() == 0 else { throw GodwitError("move tests need root") }
        var argv = ["lab", "up", "--name", name, "--hosts", String(hosts)]
        if let bandwidth { argv += ["--bandwidth", bandwidth] }
        let up = try godwit(argv)
        guard up.succeeded else {
            tearDown()
            throw GodwitError("lab up failed: \(up.stderr)")
        }
    }

    deinit { tearDown() }

    func tearDown() {
        guard !tornDown else { return }
        tornDown = true
        _ = try? godwit(["lab", "down", "--name", name])
        for pid in startedDaemons { _ = poll(timeout: 5) { DetachedProcess.exitStatus(of: pid) != nil } }
        try? FileManager.default.removeItem(atPath: stateRoot)
    }

    var environment: [String: String] {
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_LAB_ROOT"] = stateRoot
        environment["GODWIT_DIR"] = nil
        return environment
    }

    func godwit(_ arguments: [String]) throws -> CommandResult {
        try Command.run([LabCLITests.godwit] + arguments, environment: environment)
    }

    /// `godwit VERB --dir LAB/HOST ARGS...`
    func on(_ host: String, _ verb: [String], _ arguments: [String] = []) throws -> CommandResult {
        try godwit(verb + ["--dir", "\(name)/\(host)"] + arguments)
    }

    func sh(_ host: String, _ container: String, _ script: String) throws -> CommandResult {
        try on(host, ["exec"], [container, "--", "sh", "-c", script])
    }

    func stateDirectory(_ host: String) -> String { "\(stateRoot)/\(name)/\(host)" }
    var clientNetnsPath: String { "/run/netns/godwit-\(name)-client" }

    func containers(_ host: String) throws -> [ContainerInfo] {
        let result = try on(host, ["list"], ["--format", "json"])
        guard result.succeeded else { throw GodwitError("list on \(host) failed: \(result.stderr)") }
        return try APICoding.decoder().decode([ContainerInfo].self, from: Data(result.stdout.utf8))
    }

    func container(_ host: String, _ name: String) throws -> ContainerInfo? { try containers(host).first { $0.name == name } }

    /// The host's godwitd pid (found by its --state-dir).
    func daemonPID(_ host: String) -> pid_t? {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.first { pid in
            guard let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline") else { return false }
            let args = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard args.first?.hasSuffix("godwitd") == true else { return false }
            // Lab daemons run from the file `godwit init` wrote in their state directory.
            if let i = args.firstIndex(of: "--config"), i + 1 < args.count { return args[i + 1] == stateDirectory(host) + "/godwitd.yaml" }
            guard let i = args.firstIndex(of: "--state-dir"), i + 1 < args.count else { return false }
            return args[i + 1] == stateDirectory(host)
        }
    }

    /// Kills the host's daemon (SIGKILL: a crash), returning its command line to restart it.
    func killDaemon(_ host: String) throws -> [String] {
        guard let pid = daemonPID(host), let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline") else {
            throw GodwitError("no godwitd for \(host)")
        }
        let argv = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
        kill(pid, SIGKILL)
        _ = poll(timeout: 10) { kill(pid, 0) != 0 }
        return argv
    }

    /// Starts a daemon again (inside the host's namespace) with `argv` (+ `extra`) and waits
    /// until the CLI gets answers.
    func startDaemon(_ host: String, argv: [String], extra: [String] = []) throws {
        let netns = "/run/netns/godwit-\(name)-\(host)"
        startedDaemons.append(try DetachedProcess.spawn(["nsenter", "--net=" + netns] + argv + extra,
                                                        log: stateDirectory(host) + "/godwitd.log"))
        guard poll(timeout: 30, { (try? self.on(host, ["list"]).succeeded) == true }) else {
            throw GodwitError("godwitd of \(host) did not come back")
        }
    }

    func restartDaemon(_ host: String, extra: [String] = []) throws {
        var argv = try killDaemon(host)
        // Drop options given by an earlier restart that `extra` gives again.
        for option in extra where option.hasPrefix("--") {
            if let i = argv.firstIndex(of: option), i + 1 < argv.count { argv.removeSubrange(i...(i + 1)) }
        }
        try startDaemon(host, argv: argv, extra: extra)
    }

    /// Lines of the machine's mountinfo under a host's container directory for `container`.
    func mounts(_ host: String, _ container: String) -> [String] {
        let dir = stateDirectory(host) + "/containers/" + container
        return (HostEnvironment.read("/proc/self/mountinfo") ?? "").split(separator: "\n").map(String.init)
            .filter { $0.contains(dir + "/") || $0.contains(dir + " ") }
    }

    /// Host pids in the host's cgroup for `container`, in any hierarchy.
    func processes(_ host: String, _ container: String) -> [pid_t] {
        let cgroup = Cgroup(path: "godwit-\(name)-\(host)/\(container)", layout: CgroupLayout.current())
        return cgroup.processes()
    }
}
