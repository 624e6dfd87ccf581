import Foundation
import GodwitCore
import Testing
@testable import Lab

/// Real namespaces, bridges, qdiscs and cgroups; needs root. Each test has its own lab name
/// and state root, and removes its lab in a defer even when an expectation fails.
@Suite(.enabled(if: geteuid() == 0, "needs root"))
struct LabEndToEndTests {
    static func uniqueName() -> LabName {
        try! LabName("t" + String((0..<7).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! }))
    }

    static func temporaryRoot() -> String {
        let path = NSTemporaryDirectory() + "godwit-labtest-" + UUID().uuidString
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// iputils ping when installed, else busybox's (`make setup` installs busybox-static).
    func ping(from endpoint: LabEndpoint, _ address: String) throws -> Bool {
        let ping = Command.which("ping").map { [$0] } ?? ["busybox", "ping"]
        return try Command.run(endpoint.command(ping + ["-c1", "-W1", address])).succeeded
    }

    func qdiscs(_ netns: String, _ device: String) throws -> String {
        try LabNamespace.check(netns, ["tc", "qdisc", "show", "dev", device]).stdout
    }

    @Test func upWithTwoHostsConnectsEverything() throws {
        let name = Self.uniqueName(), root = Self.temporaryRoot()
        defer { cleanUp(name, root) }
        let lab = try Lab.create(name: name, hosts: 2, stateRoot: root)

        #expect(Set(LabNamespace.list().filter { $0.hasPrefix(name.netnsPrefix) })
                == [name.fabricNetns, name.clientNetns, name.hostNetns(1), name.hostNetns(2)])
        for host in lab.hosts {
            #expect(try ping(from: lab.client, host.address), "client -> \(host.name)")
            #expect(FileManager.default.fileExists(atPath: host.stateDirectory))
            #expect(!host.cgroups.directories.isEmpty)
            for directory in host.cgroups.directories {
                #expect(FileManager.default.fileExists(atPath: directory), "\(directory)")
            }
            if let cpuset = host.cgroups.v1["cpuset"] {
                #expect(HostEnvironment.read(cpuset + "/cpuset.cpus")?.isEmpty == false)
            }
            // A machine as it comes: the address on its uplink (`godwit init` bridges it
            // when the daemons start; LabCLITests and the move tests cover that).
            let links = try LabNamespace.check(host.netns, ["ip", "-br", "addr", "show", "dev", "uplink"]).stdout
            #expect(links.contains(host.address + "/16"))
        }
        #expect(try ping(from: lab.hosts[0].endpoint, lab.hosts[1].address), "h1 -> h2")
        #expect(try ping(from: lab.hosts[1].endpoint, lab.hosts[0].address), "h2 -> h1")
        // Nothing in the root namespace
        let rootLinks = try Command.check(["ip", "-br", "link"]).stdout
        #expect(!rootLinks.contains(name.netnsPrefix))

        let loaded = try Lab.load(name: name, stateRoot: root)
        #expect(loaded.hosts == lab.hosts && loaded.createdAt != nil)
        let status = LabStatus.collect(name, stateRoot: root)
        #expect(status.running && status.hosts.count == 2 && status.hosts.allSatisfy { $0.endpoint.rate == "unlimited" })
        #expect(LabInventory.names(stateRoot: root).contains(name))
    }

    @Test func secondUpFailsAndSaysHowToRemove() throws {
        let name = Self.uniqueName(), root = Self.temporaryRoot()
        defer { cleanUp(name, root) }
        _ = try Lab.create(name: name, hosts: 1, stateRoot: root)
        let error = #expect(throws: GodwitError.self) { try Lab.create(name: name, hosts: 1, stateRoot: root) }
        #expect(error?.message.contains("lab '\(name)' already exists") == true)
        #expect(error?.hint?.contains("godwit lab down --name \(name)") == true)
        // The failed second attempt must not have damaged the first lab.
        #expect(LabStatus.collect(name, stateRoot: root).running)
    }

    @Test func shapeInstallsAndRemovesTbfOnBothEnds() throws {
        let name = Self.uniqueName(), root = Self.temporaryRoot()
        defer { cleanUp(name, root) }
        let lab = try Lab.create(name: name, hosts: 2, bandwidth: Bandwidth(bitsPerSecond: 1_000_000_000), stateRoot: root)
        for host in lab.hosts {
            #expect(try qdiscs(host.netns, "uplink").contains("tbf"))
            #expect(try qdiscs(lab.fabricNetns, host.name).contains("rate 1Gbit"))
        }
        try lab.shape("h1", to: LinkRate(parsing: "500mbit"))
        #expect(try qdiscs(lab.hosts[0].netns, "uplink").contains("rate 500Mbit"))
        #expect(try qdiscs(lab.fabricNetns, "h1").contains("rate 500Mbit"))
        #expect(try qdiscs(lab.fabricNetns, "h2").contains("rate 1Gbit"))
        #expect(LabStatus.collect(name, stateRoot: root).hosts.map(\.endpoint.rate) == ["500mbit", "1gbit"])

        try lab.shape("h1", to: .unlimited)
        try lab.shape("h1", to: .unlimited)  // twice: removing nothing is fine
        #expect(try !qdiscs(lab.hosts[0].netns, "uplink").contains("tbf"))
        #expect(try !qdiscs(lab.fabricNetns, "h1").contains("tbf"))
        #expect(try ping(from: lab.hosts[0].endpoint, lab.hosts[1].address))
        #expect(throws: GodwitError.self) { try lab.shape("h7", to: .unlimited) }
    }

    @Test func downKillsAndRemovesEverything() throws {
        let name = Self.uniqueName(), root = Self.temporaryRoot()
        defer { cleanUp(name, root) }
        let lab = try Lab.create(name: name, hosts: 2, stateRoot: root)
        let host = lab.hosts[0]

        // A daemon-like process in a nested cgroup, frozen (v1 freezer), plus a stray process
        // in the client's namespace: down must get rid of both.
        let sleeper = try spawn(host.endpoint.command(["sleep", "600"]))
        let stray = try spawn(lab.client.command(["sleep", "600"]))
        for directory in host.cgroups.directories {
            let child = directory + "/daemon"
            try FileManager.default.createDirectory(atPath: child, withIntermediateDirectories: false)
            try LabCgroups.writeControl(child + "/cgroup.procs", "\(sleeper.processIdentifier)")
        }
        if let freezer = host.cgroups.v1["freezer"] {
            try LabCgroups.writeControl(freezer + "/daemon/freezer.state", "FROZEN")
        }

        // lab.json is not needed for teardown
        try FileManager.default.removeItem(atPath: lab.descriptionPath)
        let report = try Lab.destroy(name: name, stateRoot: root)
        #expect(report.removed.namespaces.count == 4)
        sleeper.waitUntilExit()
        stray.waitUntilExit()
        #expect(sleeper.terminationReason == .uncaughtSignal && stray.terminationReason == .uncaughtSignal)

        #expect(LabNamespace.list().filter { $0.hasPrefix(name.netnsPrefix) }.isEmpty)
        #expect(LabCgroups.existing(of: name).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: lab.stateDirectory))
        #expect(LabLeftovers.find(name, stateRoot: root).isEmpty)
        // and again: nothing to do, no error
        #expect(try !Lab.destroy(name: name, stateRoot: root).removedAnything)
    }

    @Test func failureHalfwayRemovesWhatWasBuilt() throws {
        let name = Self.uniqueName(), root = Self.temporaryRoot()
        defer { cleanUp(name, root) }
        // A hierarchy that doesn't exist makes cgroup creation fail after the network is built.
        let broken = CgroupLayout(v1: ["memory": "/nonexistent/godwit-test"], unified: nil)
        let error = #expect(throws: GodwitError.self) {
            try Lab.create(name: name, hosts: 2, stateRoot: root, hierarchies: broken)
        }
        #expect(error?.description.contains("mkdir /nonexistent/godwit-test") == true)
        #expect(LabNamespace.list().filter { $0.hasPrefix(name.netnsPrefix) }.isEmpty)
        #expect(!FileManager.default.fileExists(atPath: LabPaths.labDirectory(name, stateRoot: root)))
    }

    @Test func downRefusesForeignDirectories() throws {
        let name = Self.uniqueName(), root = Self.temporaryRoot()
        let directory = LabPaths.labDirectory(name, stateRoot: root)
        try FileManager.default.createDirectory(atPath: directory + "/precious", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let error = #expect(throws: GodwitError.self) { try Lab.destroy(name: name, stateRoot: root) }
        #expect(error?.message.contains("not deleting") == true)
        #expect(FileManager.default.fileExists(atPath: directory + "/precious"))
    }

    @Test func loadOfAMissingLabExplains() {
        let root = Self.temporaryRoot()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let error = #expect(throws: GodwitError.self) { try Lab.load(name: Self.uniqueName(), stateRoot: root) }
        #expect(error?.message.contains("no lab named") == true)
        #expect(error?.hint?.contains("godwit lab up") == true)
    }

    private func cleanUp(_ name: LabName, _ root: String) {
        _ = try? Lab.destroy(name: name, stateRoot: root)
        try? FileManager.default.removeItem(atPath: root)
    }

    private func spawn(_ argv: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try Command.resolve(argv[0]))
        process.arguments = Array(argv.dropFirst())
        try process.run()
        return process
    }
}
