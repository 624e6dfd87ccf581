import API
import Foundation
import GodwitCore

/// What a move may do to the link between the hosts: the cap on its memory pages and
/// whether pages go compressed. Decided once, at the negotiation, from the request (its
/// `--bandwidth` wins), the container's keys and what the destination announced; then
/// shared by every sender of the move, so the cap holds for all of them together.
public struct MoveLink: Sendable {
    public let limiter: RateLimiter?
    /// Where the cap came from ("--bandwidth", "migration.bandwidth").
    public let limitSource: String?
    /// nil: pages go raw.
    public let compression: PageCompressionPolicy?
    /// The setting as the report shows it (why it is off, when the peer decided).
    public let compressionText: String
    /// False only for `none`, before the negotiation.
    public private(set) var decided = true

    public init(request: MoveBandwidth?, config: ContainerConfig, destination: PeerCapabilities) {
        let rate: Bandwidth?
        switch request {
        case .some(let r): (rate, limitSource) = (r.rate, r.rate == nil ? nil : "--bandwidth")
        case .none: (rate, limitSource) = (config.migrationBandwidth, config.migrationBandwidth == nil ? nil : "migration.bandwidth")
        }
        limiter = rate.map(RateLimiter.init)
        let mode = PageCompressionPolicy.Mode(rawValue: config.migrationCompression) ?? .auto
        if mode == .off {
            compression = nil
            compressionText = "off"
        } else if !(destination.pageRecordFeatures ?? []).contains("zstd") {
            // An older destination would refuse the record kind: never send it one.
            compression = nil
            compressionText = "off (\(destination.host) can't read compressed pages)"
        } else {
            compression = PageCompressionPolicy(mode: mode)
            compressionText = mode.rawValue
        }
    }

    /// A writer of page records onto `sink` that keeps to this move's cap and compresses
    /// as decided.
    public func writer(onto sink: ByteSink) -> PageRecordWriter {
        PageRecordWriter(sink: limiter.map { RateLimitedSink(sink, limiter: $0) } ?? sink, compression: compression)
    }

    /// The report's link figures.
    public func describe(into m: inout MoveMemoryFigures) {
        if let limiter {
            m.bandwidthLimit = Bandwidth(bitsPerSecond: UInt64(limiter.bytesPerSecond * 8)).description
            m.bandwidthLimitSource = limitSource
            m.bandwidthWaitMillis = Double(limiter.waitedNanos) / 1e6
        }
        m.compression = compressionText
        if let sent = compression?.compressed, sent.pages > 0 {
            m.pagesCompressed = sent.pages
            m.compressedRawBytes = sent.raw
            m.compressedWireBytes = sent.wire
        }
    }
}

extension MoveLink {
    /// Before the negotiation: nothing capped, nothing compressed.
    static let none: MoveLink = {
        var link = MoveLink(request: .unlimited, config: ContainerConfig(["migration.compression": "off"]),
                            destination: PeerCapabilities(host: "", criuVersion: nil, strategies: []))
        link.decided = false
        return link
    }()
}

extension SourceEngine {
    /// The report's memory figures with the link's added, when the move got as far as
    /// deciding them.
    func linkFigures(_ figures: MoveMemoryFigures?) -> MoveMemoryFigures? {
        guard link.decided else { return figures }
        var m = figures ?? MoveMemoryFigures()
        link.describe(into: &m)
        return m
    }

    /// Decides the link's use from the request, the container's keys and the destination's
    /// answer, and says so in the progress.
    func decideLink(destination: PeerCapabilities) {
        link = MoveLink(request: request.bandwidth, config: host.container.config, destination: destination)
        if let cap = link.limiter {
            progress.note("memory pages capped at \(ByteSizeText.format(UInt64(cap.bytesPerSecond)))/s (\(link.limitSource ?? "?"))")
        }
        progress.note("page compression: \(link.compressionText)")
    }
}
