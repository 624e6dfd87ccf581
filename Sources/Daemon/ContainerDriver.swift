import API
import Foundation
import GodwitCore

/// The address a container gets on the host's bridge, chosen and persisted by the daemon.
public struct NetworkLease: Codable, Sendable, Equatable {
    public var bridge: String
    public var address: String
    public var prefixLength: Int
    public var gateway: String?
    public var mac: String

    public init(bridge: String, address: String, prefixLength: Int, gateway: String?, mac: String) {
        self.bridge = bridge; self.address = address; self.prefixLength = prefixLength
        self.gateway = gateway; self.mac = mac
    }
}

/// Everything a driver needs to create or start one container. The daemon chooses the
/// container's directory (so it can clean up without asking the driver).
public struct DriverSpec: Sendable, Equatable {
    public var name: String
    /// The image's unpacked rootfs; read-only for drivers (copy or overlay it).
    public var imageRootfs: URL
    /// STATE_DIR/containers/NAME: the driver's own files for this container live here.
    public var directory: URL
    public var config: ContainerConfig
    /// nil when the daemon runs without --bridge/--subnet (no network namespace wiring).
    public var network: NetworkLease?
    /// Parent cgroup name under each hierarchy (`--cgroup-root`), nil for the default.
    public var cgroupParent: String?

    public init(name: String, imageRootfs: URL, directory: URL, config: ContainerConfig,
                network: NetworkLease?, cgroupParent: String?) {
        self.name = name; self.imageRootfs = imageRootfs; self.directory = directory
        self.config = config; self.network = network
        self.cgroupParent = cgroupParent
    }
}

/// What the daemon needs from a container runtime. The daemon keeps all state (database,
/// leases, operations); a driver only acts on the host and reports the init's identity.
/// Every method may block on the host (fork helper, CRIU): implementations run that work
/// off the cooperative thread pool. Errors are GodwitErrors naming the container.
public protocol ContainerDriver: Sendable {
    /// Shown in `GET /1.0` ("runtime"; "fake" only in tests).
    var kind: String { get }

    /// Prepares the container's rootfs, cgroup and network plumbing; starts nothing.
    func create(_ spec: DriverSpec) async throws
    /// Starts the init; returns once it runs (so its identity can be recorded).
    func start(_ spec: DriverSpec) async throws -> ProcessIdentity
    /// Clean shutdown (SIGTERM to init, then SIGKILL after `timeout`), or SIGKILL when
    /// `force`. Returns once the init is gone.
    func stop(_ spec: DriverSpec, init: ProcessIdentity, timeout: Duration, force: Bool) async throws
    func freeze(_ spec: DriverSpec, init: ProcessIdentity) async throws
    func unfreeze(_ spec: DriverSpec, init: ProcessIdentity) async throws
    /// Stateful stop: dumps the container to `directory` (CRIU) and leaves it stopped.
    func checkpoint(_ spec: DriverSpec, init: ProcessIdentity, to directory: URL) async throws
    /// Stateful start: restores a checkpoint taken by `checkpoint`; returns the new init.
    func restore(_ spec: DriverSpec, from directory: URL) async throws -> ProcessIdentity
    /// Applies a changed configuration (limits) to a running container; `init` nil when stopped.
    func reconfigure(_ spec: DriverSpec, init: ProcessIdentity?) async throws
    /// The command the CLI runs (with its own stdio) to execute `command` inside the
    /// container: typically `godwit-spawn exec --pid PID ... -- command`. See ExecPlan.
    func execPlan(_ spec: DriverSpec, init: ProcessIdentity, command: [String],
                  environment: [String: String], terminal: Bool) throws -> ExecPlan
    /// Removes everything `create` made. Must succeed on a half-created container.
    func destroy(_ spec: DriverSpec) async throws
    /// Adoption after a daemon restart: whether `init` is still this container's init.
    func isAlive(_ spec: DriverSpec, init: ProcessIdentity) -> Bool
    /// Where the init's stdout/stderr end up on the host (`godwit console --show-log`). The
    /// driver decides: CRIU can only dump a log fd that lives inside the container's mounts.
    func consoleLog(_ spec: DriverSpec) -> URL
    /// What would make a checkpoint of the running container fail now (`godwit check NAME`).
    func checkpointCheck(_ spec: DriverSpec, init: ProcessIdentity) throws -> CheckpointCheck
}
