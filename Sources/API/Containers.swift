import Foundation

/// A container's run state as LXD spells it. `Creating` covers the window between the
/// name being reserved and the first start, so a crash there is recognisable on restart.
public enum ContainerStatus: String, Codable, Sendable, CaseIterable {
    case creating = "Creating"
    case running = "Running"
    case stopped = "Stopped"
    case frozen = "Frozen"

    /// Whether an init process should exist for this status.
    public var hasProcess: Bool { self == .running || self == .frozen }
}

/// `GET /1.0/containers/{name}` and the elements of `GET /1.0/containers?recursion=1`.
public struct ContainerInfo: Codable, Sendable, Equatable {
    public var name: String
    public var status: ContainerStatus
    /// The image alias the container was created from.
    public var image: String
    public var imageFingerprint: String
    /// Only the keys set on the container; defaults are not expanded here.
    public var config: [String: String]
    public var ipv4: String?
    public var mac: String
    public var pid: Int32?
    /// Whether a stateful stop left a checkpoint that the next start restores.
    public var stateful: Bool
    public var createdAt: Date
    public var lastMigration: Date?

    public init(name: String, status: ContainerStatus, image: String, imageFingerprint: String,
                config: [String: String], ipv4: String?, mac: String, pid: Int32?, stateful: Bool,
                createdAt: Date, lastMigration: Date?) {
        self.name = name; self.status = status; self.image = image
        self.imageFingerprint = imageFingerprint; self.config = config; self.ipv4 = ipv4
        self.mac = mac; self.pid = pid; self.stateful = stateful; self.createdAt = createdAt
        self.lastMigration = lastMigration
    }

    enum CodingKeys: String, CodingKey {
        case name, status, image, config, ipv4, mac, pid, stateful
        case imageFingerprint = "image_fingerprint"
        case createdAt = "created_at"
        case lastMigration = "last_migration"
    }
}

/// `POST /1.0/containers`: create (and by default start) a container from an image alias.
public struct LaunchRequest: Codable, Sendable, Equatable {
    public var name: String
    public var image: String
    public var config: [String: String]
    /// false: create only (`godwit init`); true: create and start (`godwit launch`).
    public var start: Bool

    public init(name: String, image: String, config: [String: String] = [:], start: Bool = true) {
        self.name = name; self.image = image; self.config = config; self.start = start
    }
}

/// `PUT /1.0/containers/{name}`: replaces the whole configuration.
public struct ContainerPut: Codable, Sendable, Equatable {
    public var config: [String: String]
    public init(config: [String: String]) { self.config = config }
}

/// `PATCH /1.0/containers/{name}`: merges; a null value unsets the key.
public struct ContainerPatch: Codable, Sendable, Equatable {
    public var config: [String: String?]
    public init(config: [String: String?]) { self.config = config }
}

public enum ContainerAction: String, Codable, Sendable, CaseIterable {
    case start, stop, restart, freeze, unfreeze
}

/// `PUT /1.0/containers/{name}/state`, as in LXD.
public struct ContainerStatePut: Codable, Sendable, Equatable {
    public var action: ContainerAction
    /// stop: checkpoint with CRIU so the next start restores the processes.
    public var stateful: Bool
    /// stop: SIGKILL instead of a clean shutdown (also after `timeout`).
    public var force: Bool
    /// stop: seconds to wait for a clean shutdown before killing; -1 uses the default.
    public var timeout: Int

    public init(action: ContainerAction, stateful: Bool = false, force: Bool = false, timeout: Int = -1) {
        self.action = action; self.stateful = stateful; self.force = force; self.timeout = timeout
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        action = try c.decode(ContainerAction.self, forKey: .action)
        stateful = try c.decodeIfPresent(Bool.self, forKey: .stateful) ?? false
        force = try c.decodeIfPresent(Bool.self, forKey: .force) ?? false
        timeout = try c.decodeIfPresent(Int.self, forKey: .timeout) ?? -1
    }
}

/// `GET /1.0/containers/{name}/state`.
public struct ContainerState: Codable, Sendable, Equatable {
    public var status: ContainerStatus
    public var pid: Int32?
    public var ipv4: String?
    public var stateful: Bool
    public init(status: ContainerStatus, pid: Int32?, ipv4: String?, stateful: Bool) {
        self.status = status; self.pid = pid; self.ipv4 = ipv4; self.stateful = stateful
    }
}

/// `POST /1.0/containers/{name}/exec`.
public struct ExecRequest: Codable, Sendable, Equatable {
    public var command: [String]
    public var environment: [String: String]
    /// Run the command on a pseudo-terminal of the container's own (`exec -t`). Optional
    /// on the wire so that older clients' requests still decode.
    public var terminal: Bool?
    public init(command: [String], environment: [String: String] = [:], terminal: Bool = false) {
        self.command = command; self.environment = environment; self.terminal = terminal ? true : nil
    }
}

/// What the CLI runs, with its own stdin/stdout/stderr, to execute a command in a
/// container: the runtime's exec helper, already pointed at the container's init (its
/// namespaces and cgroup). The daemon decides it, so it stays the authority on which
/// process is the container; the CLI only passes terminals and exit codes through.
public struct ExecPlan: Codable, Sendable, Equatable {
    public var argv: [String]
    public var environment: [String: String]
    public var pid: Int32
    public init(argv: [String], environment: [String: String], pid: Int32) {
        self.argv = argv; self.environment = environment; self.pid = pid
    }
}

/// `GET /1.0/containers/{name}/checkpoint-check`: what would make CRIU refuse to dump the
/// running container now (`godwit check NAME`).
public struct CheckpointCheck: Codable, Sendable, Equatable {
    public struct Blocker: Codable, Sendable, Equatable {
        public var kind: String
        public var pid: Int32
        public var command: String
        public var detail: String
        public var criuLine: String
        public init(kind: String, pid: Int32, command: String, detail: String, criuLine: String) {
            self.kind = kind; self.pid = pid; self.command = command; self.detail = detail; self.criuLine = criuLine
        }
        enum CodingKeys: String, CodingKey { case kind, pid, command, detail, criuLine = "criu_line" }
    }
    public var name: String
    public var processes: Int
    public var blockers: [Blocker]
    public var checkpointable: Bool { blockers.isEmpty }
    public init(name: String, processes: Int, blockers: [Blocker]) {
        self.name = name; self.processes = processes; self.blockers = blockers
    }
}

/// `GET /1.0/containers/{name}/console`.
public struct ConsoleLog: Codable, Sendable, Equatable {
    public var log: String
    public init(log: String) { self.log = log }
}
