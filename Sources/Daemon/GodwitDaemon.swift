import API
import Checkpoint
import Foundation
import GodwitCore
import Hummingbird
import Logging
import Runtime
import ServiceLifecycle
import Trust

/// godwitd's settings (its command-line options).
public struct DaemonOptions: Sendable {
    public var stateDir: URL
    public var socket: URL
    public var hostName: String
    public var bridge: String?
    public var subnet: String?
    public var gateway: String?
    public var prefixLength: Int?
    public var cgroupRoot: String?
    public var criu: String?
    public var busyboxExtraFiles: [ImageExtraFile] = []
    /// The HTTPS listener for other daemons (mutual TLS); nil: unix socket only.
    public var https: HTTPSAddress?
    /// The bridge this daemon sets up at start (from `godwit init`'s configuration).
    public var managedNetwork: ManagedNetwork?

    public init(stateDir: URL, socket: URL? = nil, hostName: String? = nil) {
        self.stateDir = stateDir
        self.socket = socket ?? stateDir.appendingPathComponent("unix.socket")
        self.hostName = hostName ?? ProcessInfo.processInfo.hostName
    }

    /// The bridge, subnet and gateway together, or nil when containers get no network.
    public func addressPlan() throws -> AddressPlan? {
        switch (bridge, subnet) {
        case (nil, nil):
            if gateway != nil { throw GodwitError("--gateway needs --bridge and --subnet") }
            return nil
        case (let bridge?, let subnet?):
            var gatewayAddress: IPv4?
            if let gateway {
                guard let parsed = IPv4(gateway) else { throw GodwitError("invalid gateway address '\(gateway)'") }
                gatewayAddress = parsed
            }
            return try AddressPlan(bridge: bridge, subnet: try Subnet(subnet), gateway: gatewayAddress,
                                   prefixLength: prefixLength)
        default:
            throw GodwitError("--bridge and --subnet go together",
                              hint: "e.g. --bridge br0 --subnet 10.77.1.0/24 [--gateway 10.77.0.1]")
        }
    }
}

/// Everything the routes need, built once at start.
public struct DaemonContext: Sendable {
    public let options: DaemonOptions
    public let store: Store
    public let events: EventBus
    public let operations: OperationManager
    public let images: ImageStore
    public let containers: ContainerService
    public let driver: any ContainerDriver
    public let startedAt: Date
    /// Identity, trusted clients, remotes and migration secrets; nil without `--https`.
    /// Use `requireTrust()` in routes that cannot work without it.
    public let trust: TrustLayer?
    /// Moves to and from peers (needs `trust` and a driver that can migrate).
    public let migrations: MigrationService

    public init(options: DaemonOptions, store: Store, driver: any ContainerDriver, trust: TrustLayer? = nil) throws {
        self.options = options
        self.store = store
        self.driver = driver
        self.trust = trust
        events = EventBus()
        operations = OperationManager(store: store, events: events)
        images = ImageStore(directory: options.stateDir.appendingPathComponent("images"), store: store,
                            extraFiles: options.busyboxExtraFiles)
        containers = ContainerService(store: store, images: images, driver: driver, operations: operations,
                                      events: events, addresses: try options.addressPlan(),
                                      cgroupParent: options.cgroupRoot,
                                      containersDirectory: options.stateDir.appendingPathComponent("containers"))
        startedAt = Date()
        migrations = MigrationService()
        migrations.attach(self)
    }

    public func serverInfo() -> ServerInfo {
        ServerInfo(version: GodwitVersion.current, hostName: options.hostName, stateDir: options.stateDir.path,
                   socket: options.socket.path, pid: getpid(), driver: driver.kind, bridge: options.bridge,
                   subnet: options.subnet, gateway: options.gateway, cgroupRoot: options.cgroupRoot,
                   criu: options.criu, startedAt: startedAt,
                   httpsAddress: trust == nil ? nil : options.https?.description,
                   certificateFingerprint: trust?.identity.fingerprint)
    }

    /// The containers' network: the managed bridge, a bridge given with --bridge, or none.
    public func networks() throws -> [NetworkInfo] {
        guard let bridge = options.bridge else { return [] }
        let leases = try store.containers().filter { $0.ipv4 != nil }.count
        if let managed = options.managedNetwork { return [ManagedBridge.info(managed, leases: leases)] }
        return [ManagedBridge.info(unmanaged: bridge, subnet: options.subnet, gateway: options.gateway, leases: leases)]
    }

    /// Where this daemon listens: "unix:PATH", and "https://ADDR:PORT" with `--https`.
    public var listenAddresses: [String] {
        ["unix:" + options.socket.path] + (trust == nil ? [] : options.https.map { ["https://\($0)"] } ?? [])
    }
}

/// The daemon's life: lock the state dir, adopt containers, serve until SIGTERM/SIGINT.
/// Shutdown never stops containers: they keep running and the next daemon adopts them.
public enum GodwitDaemon {
    public static func run(_ options: DaemonOptions, driver: any ContainerDriver) async throws {
        var log = Logger(label: "godwitd")
        log.logLevel = .info
        let logger = log
        let fm = FileManager.default
        // Root only: nothing under the state directory is for anyone else (the socket is
        // 0600 too), and the containers don't need a path through it once pivoted.
        for dir in [options.stateDir, options.stateDir.appendingPathComponent("images"),
                    options.stateDir.appendingPathComponent("containers")] {
            do {
                try OwnerOnly.directory(dir.path)
            } catch {
                throw GodwitError("cannot create \(dir.path): \(error.localizedDescription)",
                                  hint: "run godwitd as root or choose a writable --state-dir")
            }
        }
        // Before binding: Hummingbird removes an existing socket file, which must never be
        // a running daemon's.
        let lock = try DaemonLock(stateDir: options.stateDir)
        defer { lock.release() }
        // Before any CRIU run of this boot (see CRIUKernelCache).
        if driver is any MigrationDriver, let criu = try? CRIUBinary.locate(setting: options.criu) {
            logger.info("\(CRIUKernelCache.prepare(criu: criu))")
        }
        // The managed bridge before anything that attaches containers to it (adoption
        // re-attaches nothing, but a launch may come at once). Nothing of it survives a reboot.
        if let network = options.managedNetwork {
            do { try ManagedBridge.ensure(network) } catch let error as GodwitError {
                throw GodwitError("network \(network.name): \(error.message)", hint: error.hint)
            }
            logger.info("network \(network.name) (\(network.mode.rawValue)) is up")
        }
        try ChildReaper.becomeSubreaper()
        let store = try Store(path: options.stateDir.appendingPathComponent("godwit.db").path)
        // The identity is made on first start, with the listen address in its subjectAltName
        // (peers check the pinned fingerprint, so a later address change keeps working).
        let trust = try options.https.map { https in
            try TrustLayer.open(stateDir: options.stateDir, hostName: options.hostName,
                                addresses: https.isUnspecified ? [] : [https.host])
        }
        let context = try DaemonContext(options: options, store: store, driver: driver, trust: trust)
        // Incoming moves' images and pages go here. Made after the context, whose incoming
        // side empties it of what an earlier daemon left.
        try OwnerOnly.directory(options.stateDir.appendingPathComponent("migrations").path)
        try context.operations.failInterrupted()
        try store.pruneOperations(olderThan: Date().addingTimeInterval(-7 * 86400))
        // Moves into here that reached the restore, from their journals: before the
        // adoption, which would remove their half-created rows.
        var keep = Set<String>()
        if let driver = driver as? any MigrationDriver {
            keep = await MoveRecovery.incoming(context, driver: driver)
        }
        let adoption = try await context.containers.adopt(keeping: keep)
        func names(_ list: [String]) -> String { list.isEmpty ? "none" : list.joined(separator: ", ") }
        logger.info("adopted running containers: \(names(adoption.adopted)); found stopped: \(names(adoption.stopped)); removed half-created: \(names(adoption.removed))")
        // Moves out of here that the previous daemon left half-done: from their journals.
        if let driver = driver as? any MigrationDriver {
            await MoveRecovery.run(context, driver: driver)
        }

        let socket = options.socket.path
        let app = Application(
            router: APIRoutes(daemon: context).router(),
            configuration: .init(address: .unixDomainSocket(path: socket), serverName: "godwitd"),
            onServerRunning: { _ in
                // Root only: the API can run anything in any container.
                chmod(socket, 0o600)
                logger.info("godwitd \(GodwitVersion.current) ready on \(socket) (driver \(driver.kind))")
            },
            logger: logger)
        var services: [any Service] = [app]
        if let trust, let https = options.https {
            // The socket opens only once HTTPS is bound, so "the socket answers" means the
            // whole daemon is reachable, and a port in use fails start-up before the socket.
            let ready = ReadySignal()
            services = [AfterReady(ready: ready, service: app),
                        try PeerListener.make(trust: trust, address: https, context: context, ready: ready, logger: logger)]
        }
        // Services shut down in reverse order: the supervisor first, which closes the event
        // streams so the HTTP servers' graceful shutdown doesn't wait on them forever.
        let group = ServiceGroup(configuration: .init(
            services: services + [Supervisor(containers: context.containers, events: context.events)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        try? fm.removeItem(atPath: socket)
        logger.info("godwitd stopped; containers keep running")
    }
}

/// Reaps orphans and notices containers whose init died, once a second.
struct Supervisor: Service {
    let containers: ContainerService
    let events: EventBus

    func run() async throws {
        let reaper = ChildReaper()
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            reaper.reap()
            containers.checkLiveness()
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
        }
        events.close()
    }
}
