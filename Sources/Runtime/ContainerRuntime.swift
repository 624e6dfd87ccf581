import Foundation
import GodwitCore

/// Where and how one host's containers live.
public struct RuntimeConfiguration: Sendable {
    /// Each container gets `<stateRoot>/<name>/` (rootfs, overlay layers, state.json).
    public var stateRoot: String
    /// cgroup under which containers' cgroups are made; a lab host has its own.
    public var cgroupParent: String
    /// Where the bridges are; containers' veth host ends go there.
    public var hostNetwork: NetworkNamespace
    public var rootfsKind: RootFS.Kind
    /// The godwit-spawn executable (built beside godwit and godwitd).
    public var spawnHelper: String
    /// Start each container with the console keeper (docs/console.md). Off only for the
    /// engine's memory-exactness tests, which compare every page of every process.
    public var consoleKeeper: Bool = true

    public init(stateRoot: String = "/var/lib/godwit/containers", cgroupParent: String = "godwit",
                hostNetwork: NetworkNamespace = .current, rootfsKind: RootFS.Kind = .overlay,
                spawnHelper: String = GodwitPaths.sibling("godwit-spawn")) {
        self.stateRoot = stateRoot
        self.cgroupParent = cgroupParent
        self.hostNetwork = hostNetwork
        self.rootfsKind = rootfsKind
        self.spawnHelper = spawnHelper
    }
}

/// A started (or adopted) container: enough to exec into it, stop it, checkpoint it.
public struct RunningContainer: Codable, Sendable {
    public let spec: ContainerSpec
    public let initProcess: ProcessIdentity
    public let cgroup: Cgroup
    public let veth: Veth?
    public let rootfs: RootFS
    public var initPID: pid_t { initProcess.pid }
    public var name: String { spec.name }
    /// The init's stdout and stderr, as the host sees them.
    public var consoleLog: String { rootfs.path + ContainerRuntime.consolePath }
}

/// Starts, enters, stops and removes system containers. Never forks: godwit-spawn does.
public final class ContainerRuntime: Sendable {
    public let configuration: RuntimeConfiguration
    public let cgroupLayout: CgroupLayout

    /// Inside the container. Not in the host's state dir: CRIU can only dump fds on
    /// mounts of the container's own mount namespace.
    public static let consolePath = "/var/log/godwit-console.log"

    public init(_ configuration: RuntimeConfiguration) throws {
        try HostEnvironment.requireRoot(for: "running containers")
        self.configuration = configuration
        self.cgroupLayout = try CgroupLayout.detect()
    }

    public func directory(for name: String) -> String { configuration.stateRoot + "/" + name }
    public func cgroup(for name: String) -> Cgroup { Cgroup(path: configuration.cgroupParent + "/" + name, layout: cgroupLayout) }
    public func rootfs(for spec: ContainerSpec) -> RootFS {
        RootFS(image: spec.image, directory: directory(for: spec.name), kind: configuration.rootfsKind,
               idmap: spec.security.idmap)
    }
    public func veth(for spec: ContainerSpec) -> Veth? {
        spec.network.map { Veth(containerName: spec.name, mac: $0.mac) }
    }

    // MARK: lifecycle

    public func start(_ spec: ContainerSpec) throws -> RunningContainer {
        guard access(configuration.spawnHelper, X_OK) == 0 else {
            throw GodwitError("godwit-spawn not found at \(configuration.spawnHelper)", hint: "run `swift build` first")
        }
        if let existing = try? adopt(name: spec.name) {
            throw GodwitError("container \(spec.name) is already running (init pid \(existing.initPID))")
        }
        // A stopped container's directory is its disk: starting it again reuses the rootfs,
        // and a failed restart must not delete it.
        let restarting = FileManager.default.fileExists(atPath: directory(for: spec.name))
        do {
            try FileManager.default.createDirectory(atPath: directory(for: spec.name), withIntermediateDirectories: true)
            let rootfs = rootfs(for: spec)
            try rootfs.prepare(spawnHelper: configuration.spawnHelper)
            // systemd sets the hostname from /etc/hostname at boot, which an image built
            // elsewhere fills with its build host's name (as LXD's templates do, write ours).
            if spec.system, FileManager.default.fileExists(atPath: rootfs.path + "/etc") {
                let file = rootfs.path + "/etc/hostname"
                try Data((spec.hostname + "\n").utf8).write(to: URL(fileURLWithPath: file))
                // Written by host root: owned by the container's root, not by "nobody".
                if let base = spec.security.idmap?.hostBase, chown(file, base, base) != 0 {
                    throw GodwitError.errno("chown \(file)")
                }
            }
            let cgroup = cgroup(for: spec.name)
            try cgroup.create()
            try cgroup.apply(spec.limits)
            // systemd inside creates its own cgroups below the container's.
            if let base = spec.security.idmap?.hostBase { try cgroup.delegate(to: base) }
            let identity = try spawn(spec, rootfs: rootfs, cgroup: cgroup)
            let container = RunningContainer(spec: spec, initProcess: identity, cgroup: cgroup,
                                             veth: veth(for: spec), rootfs: rootfs)
            try save(container)
            return container
        } catch {
            try? teardown(spec, keepFiles: restarting)
            let failure = (error as? GodwitError) ?? GodwitError.wrap(error, doing: "starting container")
            throw failure.with("container", spec.name)
        }
    }

    /// Runs godwit-spawn's handshake: "pid N" out, network configured, "go" in, "ok" out.
    private func spawn(_ spec: ContainerSpec, rootfs: RootFS, cgroup: Cgroup) throws -> ProcessIdentity {
        var args = ["run", "--rootfs", rootfs.path, "--console", Self.consolePath, "--hostname", spec.hostname]
        for dir in cgroup.directories { args += ["--cgroup", dir] }
        for line in spec.environmentLines { args += ["--env", line] }
        if spec.system { args.append("--system") }
        if let idmap = spec.security.idmap { args += ["--userns", idmap.spawnArgument] }
        args += spec.security.confinementArguments
        // Built beside godwit-spawn (scripts/build-workloads.sh). Without it the container
        // still starts, with its output going to the log file only and no interactive console.
        let keeper = URL(fileURLWithPath: configuration.spawnHelper).deletingLastPathComponent()
            .appendingPathComponent("godwit-console-keeper").path
        if configuration.consoleKeeper, access(keeper, X_OK) == 0 { args += ["--keeper", keeper] }
        args += ["--"] + spec.initCommand

        let process = Process()
        process.executableURL = URL(fileURLWithPath: configuration.spawnHelper)
        process.arguments = args
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let fail = { (reason: String) -> GodwitError in
            try? input.fileHandleForWriting.close()  // EOF instead of "go": godwit-spawn kills the init
            process.waitUntilExit()
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let detail = stderr.split(separator: "\n").last.map(String.init) ?? "exit \(process.terminationStatus)"
            return GodwitError("\(reason): \(detail)")
        }
        let first = readLine(output.fileHandleForReading.fileDescriptor)
        guard let first, first.hasPrefix("pid "), let pid = pid_t(first.dropFirst(4)) else {
            throw fail("godwit-spawn did not report the init's pid")
        }
        // Read now, while the init waits for "go": it is pid 1 of a fresh namespace and has
        // not exec'd yet, so this pid can't have been reused.
        guard let identity = ProcessIdentity.of(pid) else { throw fail("the container's init (pid \(pid)) vanished") }
        if let network = spec.network, let veth = veth(for: spec) {
            do {
                try veth.attach(initPID: pid, network: network, in: configuration.hostNetwork)
            } catch {
                _ = fail("network setup failed")
                throw error
            }
        }
        // The throwing write: the non-throwing one traps on EPIPE if godwit-spawn died.
        do { try input.fileHandleForWriting.write(contentsOf: Data("go\n".utf8)) } catch {}
        try? input.fileHandleForWriting.close()
        let last = readLine(output.fileHandleForReading.fileDescriptor)
        process.waitUntilExit()
        guard process.terminationStatus == 0, last == "ok" else {
            let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw GodwitError("the container's init did not start: \(stderr.trimmingCharacters(in: .whitespacesAndNewlines))",
                              hint: "check the image has \(spec.initCommand[0]) and the rootfs is writable")
        }
        return identity
    }

    /// The init's stop signal (pid 1 only gets signals it handles; systemd halts on
    /// SIGRTMIN+3), then SIGKILL to the whole cgroup once `timeout` has passed.
    public func stop(_ container: RunningContainer, timeout: TimeInterval = 10) throws {
        if container.initProcess.isAlive {
            kill(container.initPID, container.spec.stopSignal)
            _ = poll(timeout: timeout) { !container.initProcess.isAlive }
        }
        // Also when the init is gone: an orphaned exec'd process may still be in the cgroup.
        try container.cgroup.kill()
        guard poll(timeout: 5, { !container.initProcess.isAlive }) else {
            throw GodwitError("container \(container.name)'s init (pid \(container.initPID)) survived SIGKILL")
        }
    }

    /// Stops the container if needed and removes everything it had: processes, cgroup,
    /// veth, mounts, files.
    public func destroy(_ container: RunningContainer) throws {
        // Tear down as much as possible even if stopping failed, then report the first error.
        var failure: Error?
        do { try stop(container, timeout: 0) } catch { failure = error }
        do { try teardown(container.spec) } catch { failure = failure ?? error }
        if let failure { throw failure }
    }

    /// Destroys what a container left behind when all that is known is its name (a crash
    /// before state.json was written, or a daemon that lost it).
    public func destroy(name: String) throws {
        if let container = try? load(name: name) {
            try destroy(container)
            return
        }
        try ContainerSpec.validate(name: name)
        try cgroup(for: name).kill()
        try teardown(name: name, veth: Veth(containerName: name), rootfs: nil, keepFiles: false)
    }

    private func teardown(_ spec: ContainerSpec, keepFiles: Bool = false) throws {
        try cgroup(for: spec.name).kill()
        try teardown(name: spec.name, veth: veth(for: spec), rootfs: rootfs(for: spec), keepFiles: keepFiles)
    }

    private func teardown(name: String, veth: Veth?, rootfs: RootFS?, keepFiles: Bool) throws {
        try veth?.remove(in: configuration.hostNetwork)
        try cgroup(for: name).remove()
        if keepFiles { return }
        let dir = directory(for: name)
        try (rootfs ?? RootFS(image: "", directory: dir, kind: .overlay)).remove()
        if FileManager.default.fileExists(atPath: dir) { try FileManager.default.removeItem(atPath: dir) }
    }

    // MARK: exec

    /// Runs `argv` in the container with the caller's stdio; returns its exit status
    /// (128+N when killed by signal N).
    public func exec(_ container: RunningContainer, _ argv: [String], environment: [String: String]? = nil,
                     stdin: FileHandle = .standardInput, stdout: FileHandle = .standardOutput,
                     stderr: FileHandle = .standardError) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: configuration.spawnHelper)
        process.arguments = try execArguments(container, argv, environment: environment)
        process.standardInput = stdin
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Runs `argv` in the container and collects its output.
    public func run(_ container: RunningContainer, _ argv: [String], input: String? = nil,
                    environment: [String: String]? = nil) throws -> CommandResult {
        try Command.run([configuration.spawnHelper] + execArguments(container, argv, environment: environment), input: input)
    }

    /// godwit-spawn arguments that run `argv` inside the container (the CLI runs them itself,
    /// so stdio and the exit code pass straight through).
    public func execArguments(_ container: RunningContainer, _ argv: [String],
                               environment: [String: String]?, terminal: Bool = false) throws -> [String] {
        guard container.initProcess.isAlive else {
            throw GodwitError("container \(container.name) is not running").with("pid", String(container.initPID))
        }
        var args = ["exec", "--pid", String(container.initPID)] + (terminal ? ["--tty"] : [])
        if container.spec.system { args.append("--system") }
        args += container.spec.security.confinementArguments
        for dir in container.cgroup.directories { args += ["--cgroup", dir] }
        var spec = container.spec
        if let environment { spec.environment = environment }
        for line in spec.environmentLines { args += ["--env", line] }
        return args + ["--"] + argv
    }

    // MARK: adoption

    /// The container recorded under `name`, if its init is still the same process.
    public func adopt(name: String) throws -> RunningContainer {
        let container = try load(name: name)
        guard container.initProcess.isAlive else {
            throw GodwitError("container \(name)'s init (pid \(container.initPID)) is no longer running",
                              hint: "`destroy` it to clean up what it left")
        }
        return container
    }

    /// Takes over a container whose init was started by someone else (CRIU restore) and
    /// records it, so that stop/destroy/exec work as for one started here.
    public func adopt(spec: ContainerSpec, initPID: pid_t) throws -> RunningContainer {
        guard let identity = ProcessIdentity.of(initPID) else {
            throw GodwitError("no running process with pid \(initPID) to adopt as \(spec.name)")
        }
        let container = RunningContainer(spec: spec, initProcess: identity, cgroup: cgroup(for: spec.name),
                                         veth: veth(for: spec), rootfs: rootfs(for: spec))
        try save(container)
        return container
    }

    private func stateFile(_ name: String) -> String { directory(for: name) + "/state.json" }

    private func save(_ container: RunningContainer) throws {
        let data = try JSONEncoder().encode(container)
        try data.write(to: URL(fileURLWithPath: stateFile(container.name)), options: .atomic)
    }

    private func load(name: String) throws -> RunningContainer {
        try ContainerSpec.validate(name: name)
        guard let data = FileManager.default.contents(atPath: stateFile(name)) else {
            throw GodwitError("no container named \(name)").with("state", stateFile(name))
        }
        do {
            var container = try JSONDecoder().decode(RunningContainer.self, from: data)
            // Re-derive what depends on this host rather than trusting the file.
            container = RunningContainer(spec: container.spec, initProcess: container.initProcess,
                                         cgroup: cgroup(for: name), veth: veth(for: container.spec),
                                         rootfs: container.rootfs)
            return container
        } catch {
            throw GodwitError("corrupt state file \(stateFile(name)): \(error)")
        }
    }
}

/// One line from a pipe, byte by byte so nothing after the newline is consumed.
private func readLine(_ fd: Int32) -> String? {
    var bytes: [UInt8] = []
    var byte: UInt8 = 0
    while true {
        let n = read(fd, &byte, 1)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
        if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
        bytes.append(byte)
    }
}
