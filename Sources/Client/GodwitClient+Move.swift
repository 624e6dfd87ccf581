import API
import Foundation

extension GodwitClient {
    /// `POST /1.0/containers/{name}/move`: an operation; its metadata's `report` is the MoveReport.
    public func move(_ name: String, _ request: MoveRequest) async throws -> OperationInfo {
        try await call(.POST, Self.container(name) + "/move", body: request)
    }

    /// The last move of `name` on this host (either direction), if any.
    public func lastMove(_ name: String) async throws -> MoveReport? {
        let history: [MoveReport] = try await call(.GET, Self.container(name) + "/moves")
        return history.last
    }
}

extension MoveReport {
    /// The report as `godwit move` prints it.
    public var text: String {
        func ms(_ v: Double) -> String { v >= 1000 ? String(format: "%.2f s", v / 1000) : String(format: "%.0f ms", v) }
        func bytes(_ b: UInt64) -> String {
            b >= 1 << 30 ? String(format: "%.2f GiB", Double(b) / Double(1 << 30))
                : b >= 1 << 20 ? String(format: "%.1f MiB", Double(b) / Double(1 << 20)) : "\(b / 1024) KiB"
        }
        var lines = ["move \(container) \(source) -> \(destination):\(newName): \(outcome) (\(mode.rawValue); \(modeReason))"]
        if let reason { lines.append("  failed in \(failedPhase ?? "?"): \(reason)") }
        lines.append("  total \(ms(totalMillis)), frozen \(frozenMillis.map(ms) ?? "-")"
                     + (allLocalMillis.map { ", all memory on the destination after \(ms($0))" } ?? "")
                     + ", \(bytes(totalBytes)) over the link")
        for phase in phases {
            lines.append("    \(phase.name.padding(toLength: 28, withPad: " ", startingAt: 0)) \(ms(phase.millis))"
                         + (phase.bytes > 0 ? "  \(bytes(phase.bytes))" : ""))
        }
        return lines.joined(separator: "\n")
    }
}
