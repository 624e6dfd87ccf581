import Foundation
import GodwitCore

/// An unprivileged container's id map: ids 0..<count inside are hostBase..<hostBase+count
/// on the host, the same for uids and gids (LXD's default shape).
public struct IdMap: Codable, Sendable, Equatable, CustomStringConvertible {
    public var hostBase: UInt32
    public var count: UInt32

    /// 65536 ids: every id a Debian system uses, nobody (65534) included.
    public static let defaultCount: UInt32 = 65536

    public init(hostBase: UInt32, count: UInt32 = IdMap.defaultCount) throws {
        guard hostBase > 0, count > 0, UInt64(hostBase) + UInt64(count) < UInt64(UInt32.max) else {
            throw GodwitError("invalid id map \(hostBase):\(count)", hint: "the range must start above 0 and end below 4294967295")
        }
        self.hostBase = hostBase
        self.count = count
    }

    /// As /proc/PID/uid_map shows it.
    public var description: String { "0 \(hostBase) \(count)" }
    var spawnArgument: String { "\(hostBase):\(count)" }

    /// The host id of `id` inside, nil when the map doesn't cover it.
    public func host(_ id: UInt32) -> UInt32? { id < count ? hostBase + id : nil }
    /// The id inside of host id `id`, nil when it is outside the range.
    public func inside(_ id: UInt32) -> UInt32? { id >= hostBase && id - hostBase < count ? id - hostBase : nil }
}

/// How root in a container is confined beyond its namespaces (docs/unprivileged.md). The
/// daemon builds it from the container's security.* keys; the Runtime applies it at start
/// and exec, and CRIU carries the result (user namespace, bounding set, filter) through a
/// dump and restore on its own.
public struct SecurityProfile: Codable, Sendable, Equatable {
    /// nil: no user namespace (privileged).
    public var idmap: IdMap?
    /// Capability numbers taken out of the bounding set.
    public var droppedCapabilities: [Int32]
    /// Syscall numbers that fail with EPERM.
    public var deniedSyscalls: [Int32]
    public var noNewPrivileges: Bool

    public init(idmap: IdMap?, droppedCapabilities: [Int32] = [], deniedSyscalls: [Int32] = [], noNewPrivileges: Bool = false) {
        self.idmap = idmap
        self.droppedCapabilities = droppedCapabilities
        self.deniedSyscalls = deniedSyscalls
        self.noNewPrivileges = noNewPrivileges
    }

    /// What containers had before profiles existed: the engine's own tests still run these.
    public static let unconfined = SecurityProfile(idmap: nil)

    /// godwit-spawn's options for what both `run` and `exec` apply (security.c).
    var confinementArguments: [String] {
        droppedCapabilities.flatMap { ["--cap-drop", String($0)] }
            + deniedSyscalls.flatMap { ["--deny-syscall", String($0)] }
            + (noNewPrivileges ? ["--no-new-privs"] : [])
    }
}

/// The host ids set aside for containers, read from /etc/subuid and /etc/subgid as LXD
/// does: root's first entry present in both, else LXD's default 1000000:1000000000. Each
/// container gets a slot of `IdMap.defaultCount` ids of it.
public struct SubordinateRange: Sendable, Equatable, CustomStringConvertible {
    public var start: UInt32
    public var count: UInt32
    /// Where it came from, for `godwit check`: "/etc/subuid" or "default".
    public var source: String

    public static let fallback = SubordinateRange(start: 1_000_000, count: 1_000_000_000, source: "default")

    public var description: String { "\(start):\(count)" }
    public var slots: UInt32 { count / IdMap.defaultCount }

    public func slot(_ index: UInt32) -> IdMap? {
        guard index < slots else { return nil }
        return try? IdMap(hostBase: start + index * IdMap.defaultCount)
    }

    /// Where a container's search for a free slot starts: a hash of its name, the same on
    /// every host. Two containers launched on different hosts then rarely share a slot
    /// (1 in `slots`), so moving one to the other's host seldom finds its range taken.
    public func preferredSlot(for name: String) -> UInt32 {
        slots == 0 ? 0 : UInt32(StableHash.fnv1a64("idmap:" + name) % UInt64(slots))
    }

    /// The first free slot from `preferredSlot(for:)` on, wrapping around.
    public func allocate(for name: String, used: Set<UInt32>) -> IdMap? {
        let start = preferredSlot(for: name)
        for step in 0..<slots {
            if let map = slot((start + step) % slots), !used.contains(map.hostBase) { return map }
        }
        return nil
    }

    /// Whether `map` lies inside the range on a slot boundary (a peer's word is checked).
    public func contains(_ map: IdMap) -> Bool {
        map.hostBase >= start && UInt64(map.hostBase) + UInt64(map.count) <= UInt64(start) + UInt64(count)
            && (map.hostBase - start) % IdMap.defaultCount == 0
    }

    public static func host(subuid: String = "/etc/subuid", subgid: String = "/etc/subgid") -> SubordinateRange {
        let uids = entries(HostEnvironment.read(subuid) ?? ""), gids = entries(HostEnvironment.read(subgid) ?? "")
        for range in uids where gids.contains(where: { $0.start == range.start && $0.count >= range.count }) {
            return SubordinateRange(start: range.start, count: range.count, source: subuid)
        }
        return fallback
    }

    /// root's entries ("root:START:COUNT" or "0:START:COUNT") big enough for one slot.
    static func entries(_ text: String) -> [SubordinateRange] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count == 3, f[0] == "root" || f[0] == "0", let start = UInt32(f[1]), let count = UInt32(f[2]),
                  start > 0, count >= IdMap.defaultCount, UInt64(start) + UInt64(count) < UInt64(UInt32.max) else { return nil }
            return SubordinateRange(start: start, count: count, source: "")
        }
    }
}
