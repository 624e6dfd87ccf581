import API
import Foundation
import GodwitCore
import Testing
@testable import Daemon

@Suite struct StoreTests {
    func record(_ name: String) -> ContainerRecord {
        ContainerRecord(name: name, image: "busybox", imageFingerprint: "f", config: ["limits.memory": "1024"],
                        status: .stopped, mac: StableMAC.forContainer(name))
    }

    @Test func containersRoundTripAndLeaseAddresses() throws {
        let store = try Store()
        let plan = try AddressPlan(bridge: "br0", subnet: Subnet("10.0.0.0/24"), gateway: IPv4("10.0.0.1"))
        let a = try store.insertContainer(record("a"), addresses: plan)
        let b = try store.insertContainer(record("b"), addresses: plan)
        #expect(a.ipv4 == "10.0.0.2")
        #expect(b.ipv4 == "10.0.0.3")
        let fetched = try #require(try store.container("a"))
        #expect(fetched.ipv4 == a.ipv4 && fetched.mac == a.mac && fetched.config == a.config)
        // SQLite keeps dates to the millisecond.
        #expect(abs(fetched.createdAt.timeIntervalSince(a.createdAt)) < 0.01)
        #expect(try store.containers().map(\.name) == ["a", "b"])

        try store.updateContainer("a") {
            $0.status = .running
            $0.initProcess = ProcessIdentity(pid: 42, startTime: 1234)
        }
        #expect(try store.container("a")?.initProcess == ProcessIdentity(pid: 42, startTime: 1234))
        #expect(try store.container("a")?.config == ["limits.memory": "1024"])

        // A deleted container's address is free again; the lowest free one is reused.
        try store.deleteContainer("a")
        #expect(try store.insertContainer(record("c"), addresses: plan).ipv4 == "10.0.0.2")
    }

    @Test func theDatabaseIsRootOnlyAlsoWhenAnOlderDaemonMadeItReadable() throws {
        let dir = try TempDir("store")
        func mode(_ path: String) -> mode_t {
            var info = stat()
            return lstat(path, &info) == 0 ? info.st_mode & 0o777 : 0
        }
        let fresh = dir.url.appendingPathComponent("fresh.db").path
        _ = try Store(path: fresh)
        #expect(mode(fresh) == 0o600)
        let old = dir.url.appendingPathComponent("old.db").path
        _ = try Store(path: old)
        chmod(old, 0o644)
        _ = FileManager.default.createFile(atPath: old + "-journal", contents: nil, attributes: [.posixPermissions: 0o644])
        let store = try Store(path: old)
        #expect(mode(old) == 0o600 && mode(old + "-journal") == 0o600)
        _ = try store.insertContainer(record("a"), addresses: nil)
        #expect(try store.container("a") != nil, "the database still works")
    }

    @Test func duplicateNamesAreConflicts() throws {
        let store = try Store()
        _ = try store.insertContainer(record("a"), addresses: nil)
        #expect(throws: RequestError.self) { try store.insertContainer(record("a"), addresses: nil) }
        #expect(try store.containers().count == 1)
    }

    @Test func updatingAMissingContainerIsNotFound() throws {
        let store = try Store()
        #expect(throws: RequestError.self) { try store.updateContainer("nope") { _ in } }
    }

    @Test func imagesInUseCannotBeDeleted() throws {
        let store = try Store()
        try store.insertImage(ImageRecord(alias: "img", fingerprint: "f", path: "/x", description: "", sizeBytes: 1))
        try store.insertImage(ImageRecord(alias: "img2", fingerprint: "f", path: "/x", description: "", sizeBytes: 1))
        #expect(throws: RequestError.self) {
            try store.insertImage(ImageRecord(alias: "img", fingerprint: "g", path: "/y", description: "", sizeBytes: 1))
        }
        _ = try store.insertContainer(record("a"), addresses: nil)
        #expect(throws: RequestError.self) { try store.deleteImage("img") }
        try store.deleteContainer("a")
        #expect(try store.deleteImage("img").filesStillUsed == true)
        #expect(try store.deleteImage("img2").filesStillUsed == false)
        #expect(throws: RequestError.self) { try store.deleteImage("img2") }
    }

    @Test func interruptedOperationsFailOnRestart() throws {
        let dir = try TempDir()
        // Keep the directory until the end: Swift may end a value's lifetime at its last use.
        defer { withExtendedLifetime(dir) {} }
        let path = dir.url.appendingPathComponent("godwit.db").path
        let now = Date()
        do {
            let store = try Store(path: path)
            try store.saveOperation(OperationInfo(id: "op1", description: "Launching container c1", status: .running,
                                              resources: [:], createdAt: now, updatedAt: now))
            try store.saveOperation(OperationInfo(id: "op2", description: "done", status: .success,
                                              resources: [:], createdAt: now, updatedAt: now))
        }
        let reopened = try Store(path: path)
        let failed = try reopened.failInterruptedOperations()
        #expect(failed.map(\.id) == ["op1"])
        #expect(try reopened.operation("op1")?.status == .failure)
        #expect(try reopened.operation("op2")?.status == .success)
    }

    @Test func migrationHistoryIsKept() throws {
        let store = try Store()
        let saved = try store.recordMigration(MigrationRecord(id: nil, container: "c1", direction: "out", peer: "h2",
                                                              strategy: "pre-copy", status: "Success", startedAt: Date(),
                                                              finishedAt: Date(), downtimeMilliseconds: 120,
                                                              details: ["rounds": "3"]))
        #expect(saved.id != nil)
        #expect(try store.migrations(of: "c1").first?.details == ["rounds": "3"])
    }
}
