import API
import Foundation
import GodwitCore
import Runtime
import Synchronization

/// Held while a launch or an incoming move picks or checks an id range and inserts its
/// record: two of them can't take the same range.
private let idmapAllocation = Mutex<Void>(())

extension ContainerService {
    static func refuseDaemonOwned<S: Sequence<String>>(_ keys: S) throws {
        if let key = keys.first(where: ConfigKey.isDaemonOwned) {
            throw RequestError.badRequest(GodwitError("'\(key)' is set by the daemon", hint: "leave volatile.* keys out"))
        }
    }

    /// The host's subordinate range for unprivileged containers (/etc/subuid and /etc/subgid).
    var subordinateRange: SubordinateRange { SubordinateRange.host() }

    /// Inserts a new container, giving it a free slot of the host's range (searched from
    /// a hash of its name) unless it is privileged. Each container has its own slot (LXD's
    /// security.idmap.isolated): root escaping one container owns none of another's files.
    func insertAllocatingIdmap(_ record: ContainerRecord) throws -> ContainerRecord {
        try idmapAllocation.withLock { _ in
            var record = record
            if !ContainerConfig(record.config).privileged {
                let range = subordinateRange
                let used = Set(try store.containers().compactMap { ContainerConfig($0.config).idmapBase })
                guard let map = range.allocate(for: record.name, used: used) else {
                    throw RequestError.conflict(GodwitError("no free id range for an unprivileged container: all \(range.slots) slots of \(range) are taken",
                                                            hint: "add a larger root range to /etc/subuid and /etc/subgid, or launch with -c security.privileged=true"))
                }
                record.config[ConfigKey.volatileIdmapBase] = String(map.hostBase)
            }
            return try store.insertContainer(record, addresses: addresses)
        }
    }

    /// Inserts a container arriving by a move. CRIU restores its user namespace with the
    /// map it was dumped with, so the same range must be free here: refused otherwise,
    /// before anything is copied (remapping is not done).
    func insertReservingIdmap(_ record: ContainerRecord, hostName: String) throws -> ContainerRecord {
        try idmapAllocation.withLock { _ in
            let config = ContainerConfig(record.config)
            if !config.privileged, let base = config.idmapBase {
                let map = try RequestError.validating { try IdMap(hostBase: base) }
                let range = subordinateRange
                let end = UInt64(base) + UInt64(map.count) - 1
                guard range.contains(map) else {
                    throw RequestError.conflict(GodwitError("container '\(record.name)' uses host ids \(base)-\(end), which are not a slot of \(hostName)'s subordinate range \(range)",
                                                            hint: "give both hosts the same root range in /etc/subuid and /etc/subgid"))
                }
                if let holder = try store.containers().first(where: { ContainerConfig($0.config).idmapBase == base }) {
                    throw RequestError.conflict(GodwitError("container '\(record.name)' uses host ids \(base)-\(end), which container '\(holder.name)' has on \(hostName)",
                                                            hint: "move or delete '\(holder.name)' there first; Godwit does not remap a moving container's files"))
                }
            }
            return try store.insertContainer(record, addresses: addresses)
        }
    }
}
