import API
import Foundation
import GodwitCore
import GRDB

/// One row of `containers`. The lease (ipv4) lives here so that a container and its
/// address are created and released in the same transaction.
public struct ContainerRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "containers"

    public var name: String
    public var image: String
    public var imageFingerprint: String
    public var config: [String: String]
    public var status: ContainerStatus
    public var pid: Int32?
    public var pidStartTime: Int64?
    public var ipv4: String?
    public var mac: String
    /// Set by a stateful stop: the checkpoint the next start restores.
    public var checkpointDir: String?
    public var createdAt: Date
    public var lastMigration: Date?

    public init(name: String, image: String, imageFingerprint: String, config: [String: String],
                status: ContainerStatus, mac: String, createdAt: Date = Date()) {
        self.name = name; self.image = image; self.imageFingerprint = imageFingerprint
        self.config = config; self.status = status; self.mac = mac; self.createdAt = createdAt
    }

    public var initProcess: ProcessIdentity? {
        get { pid.map { ProcessIdentity(pid: $0, startTime: UInt64(pidStartTime ?? 0)) } }
        set { pid = newValue?.pid; pidStartTime = newValue.map { Int64($0.startTime) } }
    }

    public var info: ContainerInfo {
        ContainerInfo(name: name, status: status, image: image, imageFingerprint: imageFingerprint,
                      config: config, ipv4: ipv4, mac: mac, pid: status.hasProcess ? pid : nil,
                      stateful: checkpointDir != nil, createdAt: createdAt, lastMigration: lastMigration)
    }
}

public struct ImageRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "images"

    public var alias: String
    public var fingerprint: String
    public var path: String
    public var description: String
    public var sizeBytes: Int64
    public var createdAt: Date
    /// Empty when unknown (images imported before migration v2 recorded them).
    public var os: String
    public var release: String
    public var architecture: String

    public init(alias: String, fingerprint: String, path: String, description: String, sizeBytes: Int64,
                createdAt: Date = Date(), os: String = "", release: String = "", architecture: String = "") {
        self.alias = alias; self.fingerprint = fingerprint; self.path = path
        self.description = description; self.sizeBytes = sizeBytes; self.createdAt = createdAt
        self.os = os; self.release = release; self.architecture = architecture
    }

    public var info: ImageInfo {
        ImageInfo(alias: alias, fingerprint: fingerprint, description: description,
                  sizeBytes: UInt64(max(0, sizeBytes)), createdAt: createdAt,
                  os: os, release: release, architecture: architecture)
    }
}

/// Operations are kept whole as JSON: they are only ever listed or looked up by id.
struct OperationRecord: Codable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "operations"
    var id: String
    var status: String
    var createdAt: Date
    var body: OperationInfo
}

/// One migration of a container in or out of this host (filled in by the migration work).
public struct MigrationRecord: Codable, Sendable, Equatable, FetchableRecord, MutablePersistableRecord {
    public static let databaseTableName = "migrations"
    public var id: Int64?
    public var container: String
    /// "out" (this host was the source) or "in".
    public var direction: String
    public var peer: String
    public var strategy: String
    public var status: String
    public var startedAt: Date
    public var finishedAt: Date?
    public var downtimeMilliseconds: Int64?
    public var details: [String: String]

    public mutating func didInsert(_ inserted: InsertionSuccess) { id = inserted.rowID }
}

/// The daemon's state in SQLite (STATE_DIR/godwit.db). Every change is one transaction,
/// so a crash leaves either the old or the new state, never half of a launch.
public final class Store: Sendable {
    let db: DatabaseQueue

    public init(path: String) throws {
        do {
            // Root only, also for databases an older daemon created world-readable. SQLite
            // gives its journal the database's mode; one left by a crash keeps its own.
            try OwnerOnly.file(path)
            for suffix in ["-journal", "-wal", "-shm"] where FileManager.default.fileExists(atPath: path + suffix) {
                try OwnerOnly.file(path + suffix)
            }
            var configuration = Configuration()
            configuration.busyMode = .timeout(5)
            db = try DatabaseQueue(path: path, configuration: configuration)
            try Self.migrator.migrate(db)
        } catch {
            throw GodwitError("cannot open the state database \(path): \(error)",
                              hint: "check that the state directory is writable and not on a full disk")
        }
    }

    /// An in-memory database, for tests.
    public init() throws {
        db = try DatabaseQueue()
        try Self.migrator.migrate(db)
    }

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "containers") { t in
                t.primaryKey("name", .text)
                t.column("image", .text).notNull()
                t.column("imageFingerprint", .text).notNull()
                t.column("config", .text).notNull()
                t.column("status", .text).notNull()
                t.column("pid", .integer)
                t.column("pidStartTime", .integer)
                t.column("ipv4", .text).unique()
                t.column("mac", .text).notNull()
                t.column("checkpointDir", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("lastMigration", .datetime)
            }
            try db.create(table: "images") { t in
                t.primaryKey("alias", .text)
                t.column("fingerprint", .text).notNull()
                t.column("path", .text).notNull()
                t.column("description", .text).notNull()
                t.column("sizeBytes", .integer).notNull()
                t.column("createdAt", .datetime).notNull()
            }
            try db.create(table: "operations") { t in
                t.primaryKey("id", .text)
                t.column("status", .text).notNull()
                t.column("createdAt", .datetime).notNull()
                t.column("body", .text).notNull()
            }
            try db.create(table: "migrations") { t in
                t.autoIncrementedPrimaryKey("id")
                t.column("container", .text).notNull().indexed()
                t.column("direction", .text).notNull()
                t.column("peer", .text).notNull()
                t.column("strategy", .text).notNull()
                t.column("status", .text).notNull()
                t.column("startedAt", .datetime).notNull()
                t.column("finishedAt", .datetime)
                t.column("downtimeMilliseconds", .integer)
                t.column("details", .text).notNull()
            }
        }
        // What each image is, for `image list`. Existing rows get empty strings (unknown).
        migrator.registerMigration("v2-image-os") { db in
            try db.alter(table: "images") { t in
                t.add(column: "os", .text).notNull().defaults(to: "")
                t.add(column: "release", .text).notNull().defaults(to: "")
                t.add(column: "architecture", .text).notNull().defaults(to: "")
            }
        }
        return migrator
    }

    // MARK: containers

    public func containers() throws -> [ContainerRecord] {
        try db.read { try ContainerRecord.order(Column("name")).fetchAll($0) }
    }

    public func container(_ name: String) throws -> ContainerRecord? {
        try db.read { try ContainerRecord.fetchOne($0, key: name) }
    }

    /// Reserves the name and, with a plan, the lowest free address, in one transaction.
    public func insertContainer(_ record: ContainerRecord, addresses: AddressPlan?) throws -> ContainerRecord {
        try db.write { db in
            if try ContainerRecord.exists(db, key: record.name) {
                throw RequestError.conflict(GodwitError("container '\(record.name)' already exists",
                                                        hint: "choose another name, or `godwit delete \(record.name)` first"))
            }
            var record = record
            // An incoming move brings its address along (same IP on every host).
            if let addresses, record.ipv4 == nil {
                let used = Set(try String.fetchAll(db, sql: "SELECT ipv4 FROM containers WHERE ipv4 IS NOT NULL")
                    .compactMap(IPv4.init))
                record.ipv4 = try addresses.nextFree(excluding: used).description
            }
            try record.insert(db)
            return record
        }
    }

    /// Read-modify-write of one container inside a transaction.
    @discardableResult
    public func updateContainer(_ name: String, _ change: (inout ContainerRecord) throws -> Void) throws -> ContainerRecord {
        try db.write { db in
            guard var record = try ContainerRecord.fetchOne(db, key: name) else { throw GodwitError.noSuchContainer(name) }
            try change(&record)
            try record.update(db)
            return record
        }
    }

    public func deleteContainer(_ name: String) throws {
        _ = try db.write { try ContainerRecord.deleteOne($0, key: name) }
    }

    // MARK: images

    public func images() throws -> [ImageRecord] {
        try db.read { try ImageRecord.order(Column("alias")).fetchAll($0) }
    }

    public func image(_ alias: String) throws -> ImageRecord? {
        try db.read { try ImageRecord.fetchOne($0, key: alias) }
    }

    /// Any alias of the image with this fingerprint (the oldest), or nil.
    public func image(fingerprint: String) throws -> ImageRecord? {
        try db.read { try ImageRecord.filter(Column("fingerprint") == fingerprint).order(Column("createdAt")).fetchOne($0) }
    }

    public func insertImage(_ record: ImageRecord) throws {
        try db.write { db in
            if try ImageRecord.exists(db, key: record.alias) {
                throw RequestError.conflict(GodwitError("image alias '\(record.alias)' already exists",
                                                        hint: "choose another alias, or `godwit image delete \(record.alias)` first"))
            }
            try record.insert(db)
        }
    }

    /// Deletes the alias unless a container was created from it; returns whether another
    /// alias still refers to the same files (then they must stay).
    public func deleteImage(_ alias: String) throws -> (record: ImageRecord, filesStillUsed: Bool) {
        try db.write { db in
            guard let record = try ImageRecord.fetchOne(db, key: alias) else {
                throw RequestError.notFound(GodwitError("image '\(alias)' not found", hint: "`godwit image list` shows the images"))
            }
            let users = try String.fetchAll(db, sql: "SELECT name FROM containers WHERE imageFingerprint = ?",
                                            arguments: [record.fingerprint])
            if !users.isEmpty {
                throw RequestError.conflict(GodwitError("image '\(alias)' is used by \(users.joined(separator: ", "))",
                                                        hint: "delete those containers first"))
            }
            try record.delete(db)
            let others = try ImageRecord.filter(Column("fingerprint") == record.fingerprint).fetchCount(db)
            return (record, others > 0)
        }
    }

    // MARK: operations

    public func saveOperation(_ operation: OperationInfo) throws {
        try db.write { db in
            try OperationRecord(id: operation.id, status: operation.status.rawValue,
                                createdAt: operation.createdAt, body: operation).save(db)
        }
    }

    public func operations() throws -> [OperationInfo] {
        try db.read { try OperationRecord.order(Column("createdAt")).fetchAll($0).map(\.body) }
    }

    public func operation(_ id: String) throws -> OperationInfo? {
        try db.read { try OperationRecord.fetchOne($0, key: id)?.body }
    }

    /// Operations that were pending or running when the daemon died can never finish.
    public func failInterruptedOperations(at now: Date = Date()) throws -> [OperationInfo] {
        try db.write { db in
            var failed: [OperationInfo] = []
            for var record in try OperationRecord.filter([OperationStatus.pending.rawValue, OperationStatus.running.rawValue]
                                                           .contains(Column("status"))).fetchAll(db) {
                record.body.status = .failure
                record.body.updatedAt = now
                record.body.error = ErrorResponse(error: "godwitd stopped while the operation ran", errorCode: 500,
                                                  hint: "check the affected resources and retry")
                record.status = OperationStatus.failure.rawValue
                try record.update(db)
                failed.append(record.body)
            }
            return failed
        }
    }

    /// Keeps the table from growing forever: finished operations older than `age` go.
    public func pruneOperations(olderThan date: Date) throws {
        _ = try db.write { db in
            try OperationRecord.filter(Column("createdAt") < date)
                .filter([OperationStatus.success.rawValue, OperationStatus.failure.rawValue,
                         OperationStatus.cancelled.rawValue].contains(Column("status")))
                .deleteAll(db)
        }
    }

    // MARK: migrations

    @discardableResult
    public func recordMigration(_ record: MigrationRecord) throws -> MigrationRecord {
        try db.write { db in
            var record = record
            try record.save(db)
            return record
        }
    }

    public func migrations(of container: String) throws -> [MigrationRecord] {
        try db.read { try MigrationRecord.filter(Column("container") == container).order(Column("startedAt")).fetchAll($0) }
    }
}
