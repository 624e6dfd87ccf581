import Foundation
import GodwitCore

// Moving a container between daemons: what the CLI asks its daemon, what the two daemons
// say to each other over mutual TLS, and the report the user gets.

/// `POST /1.0/containers/{name}/move` (unix socket): an operation whose metadata ends with
/// the report (`report` key, JSON).
public struct MoveRequest: Codable, Sendable, Equatable {
    /// A remote name from `godwit remote list`.
    public var target: String
    /// The name on the destination (default: the same).
    public var newName: String?
    /// nil: auto (the planner picks from both hosts' checks); on the wire "auto".
    public var mode: MigrationStrategy?
    /// Cap on the memory pages of this move (`--bandwidth`, also `unlimited`); nil: the
    /// container's migration.bandwidth. Wins over the key.
    public var bandwidth: MoveBandwidth?

    public init(target: String, newName: String? = nil, mode: MigrationStrategy? = nil, bandwidth: MoveBandwidth? = nil) {
        self.target = target; self.newName = newName; self.mode = mode; self.bandwidth = bandwidth
    }

    enum CodingKeys: String, CodingKey {
        case target, mode, bandwidth
        case newName = "new_name"
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        target = try c.decode(String.self, forKey: .target)
        newName = try c.decodeIfPresent(String.self, forKey: .newName)
        let text = try c.decodeIfPresent(String.self, forKey: .mode) ?? "auto"
        do { mode = try MigrationStrategy.parse(mode: text) } catch {
            throw DecodingError.dataCorruptedError(forKey: .mode, in: c, debugDescription: "\(error)")
        }
        // A rate string ("100mbit"), checked as the CLI checks it: never a raw number a
        // client could overflow.
        if let rate = try c.decodeIfPresent(String.self, forKey: .bandwidth) {
            do { bandwidth = try MoveBandwidth(parsing: rate) } catch {
                throw DecodingError.dataCorruptedError(forKey: .bandwidth, in: c, debugDescription: "\(error)")
            }
        }
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(target, forKey: .target)
        try c.encodeIfPresent(newName, forKey: .newName)
        try c.encode(mode?.rawValue ?? "auto", forKey: .mode)
        try c.encodeIfPresent(bandwidth?.description, forKey: .bandwidth)
    }
}

/// A move's own bandwidth setting, given with the request.
public enum MoveBandwidth: Sendable, Equatable, CustomStringConvertible {
    case unlimited
    case limited(Bandwidth)

    public init(parsing text: String) throws {
        self = try MigrationBandwidth.parse(text).map { .limited($0) } ?? .unlimited
    }

    public var rate: Bandwidth? { if case .limited(let b) = self { b } else { nil } }
    public var description: String { rate?.description ?? "unlimited" }
}

/// One strategy as one host can play it.
public struct StrategyOffer: Codable, Sendable, Equatable {
    public var strategy: String
    public var asSource: Bool
    public var asDestination: Bool
    /// Why not, when a side is unavailable.
    public var reason: String?

    public init(strategy: String, asSource: Bool, asDestination: Bool, reason: String?) {
        self.strategy = strategy; self.asSource = asSource; self.asDestination = asDestination; self.reason = reason
    }
}

/// `GET /1.0/migrations/check` (HTTPS): the destination's own support check.
public struct PeerCapabilities: Codable, Sendable, Equatable {
    public var host: String
    /// "4.2.1"; nil when CRIU is missing or unusable.
    public var criuVersion: String?
    public var strategies: [StrategyOffer]
    /// Page-record extensions this host reads as a destination ("zstd": compressed page
    /// records). Absent in older hosts' answers: the source then sends plain records only.
    public var pageRecordFeatures: [String]?
    /// vm.unprivileged_userfaultfd is 1: CRIU's lazy restore works inside an unprivileged
    /// container's user namespace. Absent in older hosts' answers (not known).
    public var unprivilegedLazyRestore: Bool?

    /// What this version of Godwit reads.
    public static let currentPageRecordFeatures = ["zstd"]

    public init(host: String, criuVersion: String?, strategies: [StrategyOffer],
                pageRecordFeatures: [String]? = PeerCapabilities.currentPageRecordFeatures,
                unprivilegedLazyRestore: Bool? = nil) {
        self.host = host; self.criuVersion = criuVersion; self.strategies = strategies
        self.pageRecordFeatures = pageRecordFeatures
        self.unprivilegedLazyRestore = unprivilegedLazyRestore
    }
}

/// `POST /1.0/migrations` (HTTPS): the source asks the destination to take a container.
public struct IncomingMigrationRequest: Codable, Sendable, Equatable {
    public var name: String
    public var image: String
    public var imageFingerprint: String
    public var config: [String: String]
    public var ipv4: String?
    public var mac: String
    /// The strategy the source chose from both checks.
    public var mode: MigrationStrategy
    public var sourceHost: String
    public var criuVersion: String?
    /// The size of the container's image (its rootfs, bytes), sent by a source that can
    /// carry the image to a destination that lacks it. Absent from older sources: such a
    /// destination then refuses as before instead of waiting for an image that never comes.
    public var imageBytes: UInt64?

    public init(name: String, image: String, imageFingerprint: String, config: [String: String], ipv4: String?,
                mac: String, mode: MigrationStrategy, sourceHost: String, criuVersion: String?, imageBytes: UInt64? = nil) {
        self.name = name; self.image = image; self.imageFingerprint = imageFingerprint; self.config = config
        self.ipv4 = ipv4; self.mac = mac; self.mode = mode; self.sourceHost = sourceHost; self.criuVersion = criuVersion
        self.imageBytes = imageBytes
    }
}

/// The destination's answer: the migration's id, its secret (every data channel of this
/// migration presents it) and the port of the data-channel listener.
public struct IncomingMigrationAnswer: Codable, Sendable, Equatable {
    public var id: String
    public var secret: String
    public var streamPort: Int
    /// true: this host lacks the container's image (by fingerprint) and expects it on the
    /// `image` channel before anything is restored. Optional so older peers still decode.
    public var imageNeeded: Bool?

    public init(id: String, secret: String, streamPort: Int, imageNeeded: Bool? = nil) {
        self.id = id; self.secret = secret; self.streamPort = streamPort; self.imageNeeded = imageNeeded
    }
}

/// What the destination did for `restore`, `commit` and later (`GET /1.0/migrations/{id}`).
public struct IncomingMigrationStatus: Codable, Sendable, Equatable {
    public var id: String
    /// receiving, restoring, restored, fetching (committed, pages still arriving), done,
    /// aborted, lost
    public var phase: String
    public var pid: Int32?
    public var fetchMillis: Double
    public var rebuildMillis: Double
    public var restoreMillis: Double
    public var pagesFetched: Int
    public var allLocalAfterCommitMillis: Double?
    /// In the answer to the commit: how long the restored tasks had been running when the
    /// answer was made (the bookkeeping after the thaw). The source subtracts it, so that
    /// its frozen time ends when the tasks run, without comparing two hosts' clocks.
    public var runningForMillis: Double?
    public var lost: String?
    /// Why the destination gave up (phase "aborted"): a failed restore, the source's abort.
    public var reason: String?
    /// Pre-copy rounds applied to the page store (the final scan's invalidations included).
    public var roundsReceived: Int?
    /// Pages of CRIU's lazy pagemaps (the memory the source's dump left to transfer).
    public var lazyPages: Int?
    /// Copy restores: lazy pages taken from the pre-copy page store instead of the source.
    public var pagesFromStore: Int?
    /// Lazy restores: pages `criu lazy-pages` got from the page store, pushed by the source
    /// after the freeze, fetched from the source on demand, and fetched more than once (0).
    public var pagesServedLocally: Int?
    public var pagesPushed: Int?
    public var pagesFetchedOnFault: Int?
    public var pagesFetchedTwice: Int?
    public var pagesRequestedTwice: Int?
    /// Post-copy and hybrid after the commit: set while the page channel to the source is
    /// down and the hosts wait for it ("waiting for the link: ...").
    public var link: String?
    /// A move that carried the image: true once this host installed it (the source's image
    /// phase ends then).
    public var imageInstalled: Bool?

    public init(id: String, phase: String, pid: Int32? = nil, fetchMillis: Double = 0, rebuildMillis: Double = 0,
                restoreMillis: Double = 0, pagesFetched: Int = 0, allLocalAfterCommitMillis: Double? = nil, lost: String? = nil) {
        self.id = id; self.phase = phase; self.pid = pid; self.fetchMillis = fetchMillis; self.rebuildMillis = rebuildMillis
        self.restoreMillis = restoreMillis; self.pagesFetched = pagesFetched
        self.allLocalAfterCommitMillis = allLocalAfterCommitMillis; self.lost = lost
    }
}

/// One pre-copy round of a move, as the source saw it.
public struct MoveRound: Codable, Sendable, Equatable {
    public var round: Int
    /// Pages the tracker reported (round 1: every resident page).
    public var dirtyPages: Int
    public var residentPages: Int
    public var dataPages: Int
    public var zeroPages: Int
    public var bytes: UInt64
    public var millis: Double
    /// Pages dirtied per second since the previous round's scan (nil for round 1).
    public var dirtyPagesPerSecond: Double?
    /// The final pause these dirty pages would need at the bandwidth measured so far.
    public var predictedPauseMillis: Double?
    /// CPU allowance auto-converge set after this round (percent), if any.
    public var throttlePercent: Int?
    /// The convergence policy's decision, in words.
    public var decision: String

    public init(round: Int, dirtyPages: Int, residentPages: Int, dataPages: Int, zeroPages: Int, bytes: UInt64, millis: Double,
                dirtyPagesPerSecond: Double? = nil, predictedPauseMillis: Double? = nil, throttlePercent: Int? = nil, decision: String) {
        self.round = round; self.dirtyPages = dirtyPages; self.residentPages = residentPages; self.dataPages = dataPages
        self.zeroPages = zeroPages; self.bytes = bytes; self.millis = millis; self.dirtyPagesPerSecond = dirtyPagesPerSecond
        self.predictedPauseMillis = predictedPauseMillis; self.throttlePercent = throttlePercent; self.decision = decision
    }
}

/// Where a move's memory came from on the destination (pre-copy, post-copy, hybrid).
/// Every field is optional: reports written before these figures existed still decode.
public struct MoveMemoryFigures: Codable, Sendable, Equatable {
    /// Pre-copy: the dirty tracker the source used (uffd-wp, soft-dirty, hashing).
    public var tracker: String?
    /// Pre-copy: why the rounds stopped.
    public var finalReason: String?
    /// Pages the final scan (container frozen) found dirty since the last round.
    public var finalDirtyPages: Int?
    /// Pages of CRIU's lazy pagemaps (what the dump left on the source).
    public var lazyPages: Int?
    /// Copy restores: pages taken from the page store / fetched from the frozen source.
    public var pagesFromStore: Int?
    public var pagesFetched: Int?
    /// Lazy restores: pages served from the destination's store, pushed after the freeze,
    /// fetched on fault, and fetched more than once (must be 0).
    public var pagesServedLocally: Int?
    public var pagesPushed: Int?
    public var pagesFetchedOnFault: Int?
    public var pagesFetchedTwice: Int?
    /// Post-copy and hybrid: how often the source reconnected a page channel that broke
    /// after the commit.
    public var pageReconnects: Int?
    /// The cap on memory pages of this move ("100mbit"), and where it came from
    /// ("--bandwidth" or "migration.bandwidth"); nil: uncapped.
    public var bandwidthLimit: String?
    public var bandwidthLimitSource: String?
    /// Page compression: the setting and what became of it ("auto", "on", "off",
    /// "off (the destination can't read it)").
    public var compression: String?
    /// Page payloads sent compressed, and their bytes before and after (nil: none sent).
    public var pagesCompressed: Int?
    public var compressedRawBytes: UInt64?
    public var compressedWireBytes: UInt64?
    /// Time the sender waited for the cap (ms).
    public var bandwidthWaitMillis: Double?

    public init() {}
}

/// One phase of a move: how long, and how many bytes crossed the link.
public struct MovePhase: Codable, Sendable, Equatable {
    public var name: String
    public var millis: Double
    public var bytes: UInt64

    public init(name: String, millis: Double, bytes: UInt64 = 0) { self.name = name; self.millis = millis; self.bytes = bytes }
}

/// The report of one move, kept in the source's (and destination's) history.
public struct MoveReport: Codable, Sendable, Equatable {
    public var container: String
    public var newName: String
    public var source: String
    public var destination: String
    public var mode: MigrationStrategy
    /// Why `mode` (auto's choice, or the user's).
    public var modeReason: String
    /// moved, rolled-back, lost
    public var outcome: String
    public var reason: String?
    public var failedPhase: String?
    public var startedAt: Date
    public var totalMillis: Double
    /// From the freeze to the container running on the destination.
    public var frozenMillis: Double?
    /// Post-copy: from the freeze until every page was on the destination.
    public var allLocalMillis: Double?
    public var phases: [MovePhase]
    /// Pre-copy rounds (pre-copy and hybrid), oldest first; nil for other modes.
    public var rounds: [MoveRound]?
    /// Where the memory came from (nil in reports of older versions).
    public var memory: MoveMemoryFigures?

    public init(container: String, newName: String, source: String, destination: String, mode: MigrationStrategy, modeReason: String,
                outcome: String, reason: String? = nil, failedPhase: String? = nil, startedAt: Date, totalMillis: Double,
                frozenMillis: Double? = nil, allLocalMillis: Double? = nil, phases: [MovePhase] = []) {
        self.container = container; self.newName = newName; self.source = source; self.destination = destination
        self.mode = mode; self.modeReason = modeReason; self.outcome = outcome; self.reason = reason
        self.failedPhase = failedPhase; self.startedAt = startedAt; self.totalMillis = totalMillis
        self.frozenMillis = frozenMillis; self.allLocalMillis = allLocalMillis; self.phases = phases
    }

    public var totalBytes: UInt64 { phases.reduce(0) { $0 + $1.bytes } }
}

// MARK: figures from the peer

// The two daemons of a move send each other figures (the destination its status, the source
// its final report) that the receiver converts and multiplies: `Int64(frozenMillis)` for
// the history, `lazyPages * page size` for progress. A number out of range would trap the
// receiving daemon there, so they are checked as they are decoded: a misbehaving peer gets
// a 400 (or its answer is refused), never a dead daemon.
enum PeerFigures {
    /// ~31 years in milliseconds; far below what Int64 holds.
    static let maxMillis = 1e12
    /// Pages (or page-like counts) of one container: 2^40 pages are 4 PiB.
    static let maxCount = 1 << 40

    static func millis<K: CodingKey>(_ value: Double?, _ key: K, _ c: KeyedDecodingContainer<K>) throws -> Double? {
        guard let value else { return nil }
        guard value.isFinite, value >= 0, value <= maxMillis else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "\(value) ms is not a duration from 0 to \(maxMillis)")
        }
        return value
    }

    static func count<K: CodingKey>(_ value: Int?, _ key: K, _ c: KeyedDecodingContainer<K>) throws -> Int? {
        guard let value else { return nil }
        guard value >= 0, value <= maxCount else {
            throw DecodingError.dataCorruptedError(forKey: key, in: c, debugDescription: "\(value) is not a count from 0 to 2^40")
        }
        return value
    }
}

extension IncomingMigrationStatus {
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func millis(_ key: CodingKeys) throws -> Double? { try PeerFigures.millis(c.decodeIfPresent(Double.self, forKey: key), key, c) }
        func count(_ key: CodingKeys) throws -> Int? { try PeerFigures.count(c.decodeIfPresent(Int.self, forKey: key), key, c) }
        func required<T>(_ value: T?, _ key: CodingKeys) throws -> T {
            guard let value else { throw DecodingError.keyNotFound(key, .init(codingPath: c.codingPath, debugDescription: "missing")) }
            return value
        }
        id = try c.decode(String.self, forKey: .id)
        phase = try c.decode(String.self, forKey: .phase)
        pid = try c.decodeIfPresent(Int32.self, forKey: .pid)
        fetchMillis = try required(millis(.fetchMillis), .fetchMillis)
        rebuildMillis = try required(millis(.rebuildMillis), .rebuildMillis)
        restoreMillis = try required(millis(.restoreMillis), .restoreMillis)
        pagesFetched = try required(count(.pagesFetched), .pagesFetched)
        allLocalAfterCommitMillis = try millis(.allLocalAfterCommitMillis)
        runningForMillis = try millis(.runningForMillis)
        lost = try c.decodeIfPresent(String.self, forKey: .lost)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        roundsReceived = try count(.roundsReceived)
        lazyPages = try count(.lazyPages)
        pagesFromStore = try count(.pagesFromStore)
        pagesServedLocally = try count(.pagesServedLocally)
        pagesPushed = try count(.pagesPushed)
        pagesFetchedOnFault = try count(.pagesFetchedOnFault)
        pagesFetchedTwice = try count(.pagesFetchedTwice)
        pagesRequestedTwice = try count(.pagesRequestedTwice)
        // Shown to users: bounded like the other peer texts are not, so a peer can't
        // fill an operation's progress with megabytes.
        link = try c.decodeIfPresent(String.self, forKey: .link).map { String($0.prefix(1000)) }
        imageInstalled = try c.decodeIfPresent(Bool.self, forKey: .imageInstalled)
    }
}

extension MoveReport {
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        func millis(_ key: CodingKeys) throws -> Double? { try PeerFigures.millis(c.decodeIfPresent(Double.self, forKey: key), key, c) }
        container = try c.decode(String.self, forKey: .container)
        newName = try c.decode(String.self, forKey: .newName)
        source = try c.decode(String.self, forKey: .source)
        destination = try c.decode(String.self, forKey: .destination)
        mode = try c.decode(MigrationStrategy.self, forKey: .mode)
        modeReason = try c.decode(String.self, forKey: .modeReason)
        outcome = try c.decode(String.self, forKey: .outcome)
        reason = try c.decodeIfPresent(String.self, forKey: .reason)
        failedPhase = try c.decodeIfPresent(String.self, forKey: .failedPhase)
        startedAt = try c.decode(Date.self, forKey: .startedAt)
        guard let total = try millis(.totalMillis) else {
            throw DecodingError.keyNotFound(CodingKeys.totalMillis, .init(codingPath: c.codingPath, debugDescription: "missing"))
        }
        totalMillis = total
        frozenMillis = try millis(.frozenMillis)
        allLocalMillis = try millis(.allLocalMillis)
        phases = try c.decode([MovePhase].self, forKey: .phases)
        rounds = try c.decodeIfPresent([MoveRound].self, forKey: .rounds)
        memory = try c.decodeIfPresent(MoveMemoryFigures.self, forKey: .memory)
        // `totalBytes` sums the phases.
        guard phases.reduce((0 as UInt64, false), { sum, p in
            let (s, o) = sum.0.addingReportingOverflow(p.bytes)
            return (s, sum.1 || o)
        }).1 == false else {
            throw DecodingError.dataCorruptedError(forKey: .phases, in: c, debugDescription: "the phases' bytes add up past 2^64")
        }
    }
}
