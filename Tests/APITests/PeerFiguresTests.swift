import Foundation
import GodwitCore
import Testing
@testable import API

/// Figures one daemon of a move sends the other: checked when decoded, since the receiver
/// converts them (Int64(frozenMillis), lazyPages * page size) where a wild value would trap.
@Suite struct PeerFiguresTests {
    func decode<T: Decodable>(_ type: T.Type, _ json: String) throws -> T {
        try APICoding.decoder().decode(T.self, from: Data(json.utf8))
    }

    func json<T: Encodable>(_ value: T) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: APICoding.encoder().encode(value)) as? [String: Any] ?? [:]
    }

    func text(_ object: [String: Any]) throws -> String {
        String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)
    }

    @Test func statusesRoundTripAndWildFiguresAreRefused() throws {
        var status = IncomingMigrationStatus(id: "m1", phase: "restored", pid: 42, fetchMillis: 1.5, rebuildMillis: 2,
                                             restoreMillis: 300, pagesFetched: 12)
        status.lazyPages = 4096
        status.allLocalAfterCommitMillis = 8
        // Every field survives the trip: the source reports a failed restore by its reason.
        status.reason = "restore failed: CRIU restore failed: Error (criu/cr-restore.c:1): injected"
        status.lost = "the page channel broke"
        let encoded = try APICoding.encoder().encode(status)
        #expect(try APICoding.decoder().decode(IncomingMigrationStatus.self, from: encoded) == status)

        let good = try json(status)
        for (key, value) in [("lazyPages", -1 as Any), ("lazyPages", Int.max), ("pagesFetched", -5),
                             ("fetchMillis", 1e300), ("restoreMillis", -1.0), ("allLocalAfterCommitMillis", 1e13)] {
            var bad = good
            bad[key] = value
            #expect(throws: DecodingError.self, "\(key)=\(value)") { try decode(IncomingMigrationStatus.self, try text(bad)) }
        }
        var missing = good
        missing["fetchMillis"] = nil
        #expect(throws: DecodingError.self) { try decode(IncomingMigrationStatus.self, try text(missing)) }
    }

    @Test func reportsRoundTripAndWildFiguresAreRefused() throws {
        var report = MoveReport(container: "c1", newName: "c1", source: "h1", destination: "h2", mode: .postCopy,
                                modeReason: "asked", outcome: "moved", startedAt: Date(timeIntervalSince1970: 1_800_000_000),
                                totalMillis: 1200, frozenMillis: 300, phases: [MovePhase(name: "images", millis: 20, bytes: 1 << 20)])
        report.rounds = []
        report.memory = MoveMemoryFigures()
        let encoded = try APICoding.encoder().encode(report)
        #expect(try APICoding.decoder().decode(MoveReport.self, from: encoded) == report)

        let good = try json(report)
        for (key, value) in [("frozenMillis", 1e300 as Any), ("totalMillis", -3.0), ("allLocalMillis", 1e19)] {
            var bad = good
            bad[key] = value
            #expect(throws: DecodingError.self, "\(key)=\(value)") { try decode(MoveReport.self, try text(bad)) }
        }
        var overflowing = good
        overflowing["phases"] = [["name": "a", "millis": 1, "bytes": UInt64.max], ["name": "b", "millis": 1, "bytes": 1]]
        #expect(throws: DecodingError.self) { try decode(MoveReport.self, try text(overflowing)) }
    }
}
