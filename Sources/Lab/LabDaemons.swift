import Foundation
import GodwitCore

/// One godwitd per lab host, started inside the host's network namespace (its mount
/// namespace is the machine's, so the CLI reaches it through the socket in the host's
/// state directory).
public enum LabDaemons {
    /// Port of each host daemon's HTTPS listener (on the host's fabric address); LXD's.
    public static let httpsPort = 8443

    /// Starts every host's daemon and waits until each answers on its socket. With
    /// `httpsPort`, each also listens for other daemons on ADDRESS:PORT (the socket answers
    /// only once that listener is up, so peers can be enrolled right away).
    /// `arguments` and `environment` (per host name) are added to a host's daemon: the fault
    /// matrix gives them a CRIU wrapper and a fault file.
    public static func start(_ lab: Lab, godwitd: String, extraFiles: [(host: String, image: String)] = [],
                             httpsPort: Int? = nil, arguments: [String: [String]] = [:],
                             environment: [String: [String: String]] = [:]) throws {
        guard access(godwitd, X_OK) == 0 else {
            throw GodwitError("godwitd not found at \(godwitd)", hint: "run `make build` first")
        }
        let outside = outsideNetwork(lab)
        for host in lab.hosts {
            let config = try initialize(host, godwit: (godwitd as NSString).deletingLastPathComponent + "/godwit", httpsPort: httpsPort)
            // Lab hosts have no route out: image builds use the machine's network
            // (DebianImageBuilder), as a real host's daemon uses its own.
            var hostEnvironment = environment[host.name] ?? [:]
            if hostEnvironment["GODWIT_BUILD_NETNS"] == nil, let outside {
                hostEnvironment["GODWIT_BUILD_NETNS"] = outside
            }
            let env = hostEnvironment.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
            var argv = ["nsenter", "--net=" + host.netnsPath, "env"] + env
                + [godwitd, "--config", config, "--cgroup-root", host.cgroups.name]
            for file in extraFiles { argv += ["--busybox-extra", "\(file.host):\(file.image)"] }
            argv += arguments[host.name] ?? []
            // Not Foundation's Process: the daemon must hold no descriptor of ours.
            try DetachedProcess.spawn(argv, log: host.stateDirectory + "/godwitd.log")
        }
        for host in lab.hosts {
            guard poll(timeout: 20, { socketAnswers(host.daemonSocket) }) else {
                let log = HostEnvironment.read(host.stateDirectory + "/godwitd.log") ?? ""
                throw GodwitError("godwitd of lab host \(host.name) did not come up: \(log.split(separator: "\n").last ?? "no log")",
                                  hint: "see \(host.stateDirectory)/godwitd.log")
            }
        }
    }

    /// A handle on the network namespace this process runs in (the machine's), bind-mounted
    /// into the lab's state directory, for the daemons' image builds: /proc/1/ns/net may be
    /// out of reach (a sandboxed init), and this process exits long before the lab does.
    /// `lab down` unmounts everything under the lab's directory. nil if it can't be made.
    static func outsideNetwork(_ lab: Lab) -> String? {
        let path = lab.stateDirectory + "/outside.netns"
        if FileManager.default.fileExists(atPath: path) { return path }
        guard FileManager.default.createFile(atPath: path, contents: nil) else { return nil }
        guard mount("/proc/self/ns/net", path, nil, UInt(MS_BIND), nil) == 0 else {
            try? FileManager.default.removeItem(atPath: path)
            return nil
        }
        return path
    }

    /// `godwit init --preseed` inside the host, as a user sets up a machine: its uplink
    /// bridged (br0, the host's address moved onto it), its share of the lab subnet for
    /// containers, its name, state and HTTPS address. Returns the configuration file. Run
    /// once: a host whose file exists was initialised (its bridge survives daemon restarts).
    static func initialize(_ host: LabHost, godwit: String, httpsPort: Int?) throws -> String {
        let config = host.stateDirectory + "/godwitd.yaml"
        if FileManager.default.fileExists(atPath: config) { return config }
        guard access(godwit, X_OK) == 0 else { throw GodwitError("godwit not found at \(godwit)", hint: "run `make build` first") }
        var preseed = "config:\n  core.name: \(host.name)\n  core.state_dir: \(host.stateDirectory)\n"
        if let httpsPort { preseed += "  core.https_address: \(host.address):\(httpsPort)\n" }
        preseed += """
            networks:
            - name: \(host.bridge)
              config:
                bridge.external_interfaces: \(host.endpoint.uplink)
                ipv4.containers: \(host.containerSubnet)

            """
        let result = try Command.run(["nsenter", "--net=" + host.netnsPath, godwit, "init", "--preseed", "-", "--config", config],
                                     input: preseed)
        guard result.succeeded else {
            throw GodwitError("`godwit init` on lab host \(host.name) failed: \(result.lastErrorLine)", hint: "the preseed was:\n\(preseed)")
        }
        return config
    }

    /// Stops the daemons of lab `name` (found by pid file and by command line, so also after
    /// a crash), SIGTERM first. Containers keep running: `lab down` kills them through the
    /// lab's cgroups afterwards.
    @discardableResult
    public static func stop(labDirectory: String) -> [pid_t] {
        let pids = running(labDirectory: labDirectory)
        for pid in pids { kill(pid, SIGTERM) }
        for pid in pids where !poll(timeout: 5, { kill(pid, 0) != 0 }) { kill(pid, SIGKILL) }
        return pids
    }

    /// godwitd processes whose state directory is inside the lab's directory.
    public static func running(labDirectory: String) -> [pid_t] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { pid_t($0) }.filter { pid in
            guard let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline") else { return false }
            let args = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            guard let exe = args.first, exe.hasSuffix("godwitd") else { return false }
            // Started with the file `godwit init` wrote in the host's state directory, or
            // (by hand or an older lab) with --state-dir.
            for option in ["--config", "--state-dir"] {
                if let i = args.firstIndex(of: option), i + 1 < args.count, args[i + 1].hasPrefix(labDirectory + "/") { return true }
            }
            return false
        }
    }

    /// The godwitd of one lab host: started from its configuration file (in its state
    /// directory) or with its --state-dir.
    public static func pid(of host: LabHost, labDirectory: String) -> pid_t? {
        running(labDirectory: labDirectory).first { pid in
            guard let bytes = HostEnvironment.readBytes("/proc/\(pid)/cmdline") else { return false }
            let args = bytes.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }
            if let i = args.firstIndex(of: "--config"), i + 1 < args.count { return args[i + 1] == host.stateDirectory + "/godwitd.yaml" }
            guard let i = args.firstIndex(of: "--state-dir"), i + 1 < args.count else { return false }
            return args[i + 1] == host.stateDirectory
        }
    }

    static func socketAnswers(_ path: String) -> Bool {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return false }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) == 0
            }
        }
    }
}
