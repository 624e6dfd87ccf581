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
        if let rounds, !rounds.isEmpty {
            lines.append("  pre-copy: \(rounds.count) round(s) with the \(memory?.tracker ?? "?") tracker; \(memory?.finalReason ?? "")")
            for r in rounds {
                var line = "    round \(r.round): \(r.dirtyPages) dirty pages, sent \(r.dataPages) data + \(r.zeroPages) zero pages (\(bytes(r.bytes))) in \(ms(r.millis))"
                if let rate = r.dirtyPagesPerSecond { line += String(format: ", dirty rate %.0f pages/s", rate) }
                if let pause = r.predictedPauseMillis { line += ", predicted pause \(ms(pause))" }
                if let throttle = r.throttlePercent { line += ", CPU throttled to \(throttle) %" }
                lines.append(line)
            }
        }
        if let m = memory {
            var parts: [String] = []
            if let n = m.finalDirtyPages { parts.append("\(n) pages dirty at the freeze") }
            if let n = m.lazyPages { parts.append("\(n) pages left on the source by the dump") }
            if let n = m.pagesFromStore { parts.append("\(n) taken from the page store") }
            if let n = m.pagesFetched, m.pagesFromStore != nil { parts.append("\(n) fetched") }
            if let n = m.pagesServedLocally { parts.append("\(n) served locally") }
            if let n = m.pagesPushed { parts.append("\(n) pushed") }
            if let n = m.pagesFetchedOnFault { parts.append("\(n) fetched on demand") }
            if let n = m.pagesFetchedTwice, n > 0 { parts.append("\(n) FETCHED TWICE") }
            if let n = m.pageReconnects, n > 0 { parts.append("page channel reconnected \(n) time\(n == 1 ? "" : "s") after a broken link") }
            if !parts.isEmpty { lines.append("  memory: " + parts.joined(separator: ", ")) }
            var link: [String] = []
            if let cap = m.bandwidthLimit {
                link.append("pages capped at \(cap) (\(m.bandwidthLimitSource ?? "?"))"
                            + (m.bandwidthWaitMillis.map { ", waited \(ms($0)) for it" } ?? ""))
            }
            if let mode = m.compression {
                var text = "compression \(mode)"
                if let n = m.pagesCompressed, let raw = m.compressedRawBytes, let wire = m.compressedWireBytes, raw > 0 {
                    text += String(format: ": %d pages, %@ sent as %@ (%.0f %%)", n, bytes(raw), bytes(wire), Double(wire) / Double(raw) * 100)
                }
                link.append(text)
            }
            if !link.isEmpty { lines.append("  link: " + link.joined(separator: "; ")) }
        }
        return lines.joined(separator: "\n")
    }
}
