import API
import Foundation
import GodwitCore
import HostCheck

/// The one place that decides how a container moves, from both hosts' own checks.
public enum MovePlanner {
    /// This host's capabilities, as the peer sees them (`GET /1.0/migrations/check`).
    public static func capabilities(_ report: HostReport) -> PeerCapabilities {
        PeerCapabilities(host: report.hostname, criuVersion: report.criu.version, strategies: report.strategies.map {
            let why = [$0.source.available ? nil : "as source: " + $0.source.detail,
                       $0.destination.available ? nil : "as destination: " + $0.destination.detail].compactMap { $0 }
            return StrategyOffer(strategy: $0.strategy.rawValue, asSource: $0.source.available,
                                 asDestination: $0.destination.available,
                                 reason: why.isEmpty ? nil : why.joined(separator: "; "))
        })
    }

    /// Strategies this daemon carries out between hosts today, in `auto`'s order of
    /// preference. (Pre-copy and hybrid run locally; their wire protocol is the next step.)
    static let implemented: [MoveMode] = [.postCopy, .stopAndCopy]

    /// The mode to use, and why; throws (saying which host lacks what) when the requested
    /// mode can't run between these two hosts.
    public static func plan(requested: MoveMode, source: PeerCapabilities, destination: PeerCapabilities)
        throws -> (mode: MoveMode, reason: String)
    {
        // CRIU's image and page-server formats change between minor versions (4.1 and 4.2
        // can't exchange pages): both sides must run the same major.minor.
        guard let sv = source.criuVersion, let dv = destination.criuVersion else {
            let host = source.criuVersion == nil ? source.host : destination.host
            throw GodwitError("CRIU is missing or unusable on \(host)", hint: "run `godwit check` there; `make setup` provisions CRIU 4.2")
        }
        func minor(_ v: String) -> String { v.split(separator: ".").prefix(2).joined(separator: ".") }
        guard minor(sv) == minor(dv) else {
            throw GodwitError("CRIU \(sv) on \(source.host) and \(dv) on \(destination.host) can't exchange images",
                              hint: "install the same CRIU minor version on both hosts")
        }
        func check(_ mode: MoveMode) -> String? {
            guard implemented.contains(mode) else {
                return "\(mode.rawValue) between hosts is not implemented yet (available: \(implemented.map(\.rawValue).joined(separator: ", ")))"
            }
            let s = source.strategies.first { $0.strategy == mode.rawValue }
            let d = destination.strategies.first { $0.strategy == mode.rawValue }
            guard let s, s.asSource else { return "\(source.host) can't be its source: \(s?.reason ?? "unknown strategy")" }
            guard let d, d.asDestination else { return "\(destination.host) can't be its destination: \(d?.reason ?? "unknown strategy")" }
            return nil
        }
        if requested != .auto {
            if let why = check(requested) {
                throw GodwitError("\(requested.rawValue) is unavailable: \(why)", hint: "`godwit move --mode auto` picks what both hosts support")
            }
            return (requested, "requested")
        }
        var refused: [String] = []
        for mode in implemented {
            if let why = check(mode) { refused.append(why); continue }
            let reason = mode == .postCopy
                ? "auto: post-copy keeps the frozen time independent of memory size, and both hosts support it"
                : "auto: stop-and-copy" + (refused.isEmpty ? "" : " (\(refused.joined(separator: "; ")))")
            return (mode, reason)
        }
        throw GodwitError("no migration strategy works between \(source.host) and \(destination.host): \(refused.joined(separator: "; "))",
                          hint: "run `godwit check` on both hosts")
    }
}
