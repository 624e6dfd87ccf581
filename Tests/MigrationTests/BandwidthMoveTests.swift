import API
import Foundation
import GodwitCore
@testable import Migration
import Runtime
import Testing

/// Real moves (containers, CRIU, the loopback peer) with a bandwidth cap and with page
/// compression on and off: the cap is applied, compressed pages arrive intact.
@Suite(.serialized)
struct BandwidthMoveTests {
    func expectVerified(_ lab: MigrationLab, _ container: RunningContainer, _ move: EngineMove, processes: Int,
                        sourceLocation: SourceLocation = #_sourceLocation) {
        let dst = lab.destinationCgroup(for: container)
        #expect(eventually(10) { MigrationLab.processes(of: dst).count == processes }, sourceLocation: sourceLocation)
        let verdicts = MigrationLab.verify(cgroup: dst, rootfs: move.destination.rootfs.path)
        #expect(verdicts.count == processes && verdicts.values.allSatisfy { $0.hasPrefix("ok") }, "\(verdicts)",
                sourceLocation: sourceLocation)
    }

    /// 32 MiB of pages at 100 Mbit/s (12.5 MB/s) need at least 2.7 s, whatever the link
    /// could do; the flag wins over the container's key. Compression off, so the bytes
    /// counted are the pages themselves.
    @Test(arguments: [MigrationStrategy.preCopy, .stopAndCopy])
    func theCapIsApplied(_ strategy: MigrationStrategy) async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let tag = "bw" + String(strategy.rawValue.prefix(4))
        let container = try lab.start(try lab.spec(tag, writer: ["32", "32", "4", "4000", "0"]))
        MigrationLab.waitUntilWriting(container)
        var keys = EngineTests.keys
        keys["migration.bandwidth"] = "1gbit"
        keys["migration.compression"] = "off"
        let cap = Bandwidth(bitsPerSecond: 100_000_000)
        let move = try await lab.engineMove(container, strategy: strategy, tag: tag, config: keys, bandwidth: .limited(cap))
        let report = try move.result.get()
        #expect(report.outcome == "moved")
        let m = try #require(report.memory)
        #expect(m.bandwidthLimit == "100mbit" && m.bandwidthLimitSource == "--bandwidth")
        #expect(m.compression == "off" && m.pagesCompressed == nil)
        #expect((m.bandwidthWaitMillis ?? 0) > 1000, "the sender waited for the cap: \(m.bandwidthWaitMillis ?? -1) ms")
        #expect(move.progress.contains { $0.contains("memory pages capped at") })
        let pageBytes = 32.0 * 1_048_576
        let floor = pageBytes / cap.bytesPerSecond * 1000 * 0.9
        if strategy == .preCopy {
            let phase = try #require(report.phases.first { $0.name == "pre-copy" })
            let rate = Double(phase.bytes) / (phase.millis / 1000)
            #expect(phase.bytes > UInt64(pageBytes * 0.9))
            #expect(rate < cap.bytesPerSecond * 1.15, "pre-copy sent at \(rate / 1e6) MB/s, cap 12.5")
            #expect(phase.millis > floor, "pre-copy took \(phase.millis) ms")
        } else {
            #expect(report.totalMillis > floor, "the move took \(report.totalMillis) ms")
        }
        print("capped \(strategy.rawValue): total \(Int(report.totalMillis)) ms, waited \(Int(m.bandwidthWaitMillis ?? 0)) ms, "
              + report.phases.map { "\($0.name) \(Int($0.millis)) ms/\($0.bytes) B" }.joined(separator: ", "))
        expectVerified(lab, container, move, processes: 1)
    }

    /// Compressible pages (the writer's COMPRESSIBLE pattern) moved with compression on and
    /// off: the memory verifies either way, and on sends a fraction of the bytes.
    @Test(arguments: [(MigrationStrategy.preCopy, "on"), (.hybrid, "on"), (.preCopy, "off"), (.hybrid, "auto")])
    func compressedPagesArriveIntact(_ strategy: MigrationStrategy, _ compression: String) async throws {
        let lab = try MigrationLab()
        defer { lab.cleanUp() }
        let tag = "z" + String(strategy.rawValue.prefix(3)) + compression
        let container = try lab.start(try lab.spec(tag, writer: ["32", "64", "16", "4000", "1", "0", "1"]))
        #expect(eventually(10) { MigrationLab.processes(of: container.cgroup).count == 2 })
        MigrationLab.waitUntilWriting(container)
        var keys = EngineTests.keys
        keys["migration.compression"] = compression
        // A cap keeps the link the bottleneck for auto, as a real WAN link would be.
        let move = try await lab.engineMove(container, strategy: strategy, tag: tag, config: keys,
                                            bandwidth: compression == "auto" ? .limited(Bandwidth(bitsPerSecond: 200_000_000)) : nil)
        let report = try move.result.get()
        #expect(report.outcome == "moved")
        let m = try #require(report.memory)
        #expect(m.compression == compression)
        let preCopy = try #require(report.phases.first { $0.name == "pre-copy" })
        if compression == "off" {
            #expect(m.pagesCompressed == nil)
            #expect(preCopy.bytes > 60 << 20, "2 × 32 MiB sent raw: \(preCopy.bytes)")
        } else {
            let pages = try #require(m.pagesCompressed)
            #expect(pages > 10_000, "both processes' 16k pages, mostly compressed: \(pages)")
            #expect(try #require(m.compressedWireBytes) * 10 < (m.compressedRawBytes ?? 0))
            #expect(preCopy.bytes < 16 << 20, "64 MiB of pages took \(preCopy.bytes) bytes")
        }
        print("\(strategy.rawValue) compression \(compression): "
              + report.phases.map { "\($0.name) \(Int($0.millis)) ms/\($0.bytes) B" }.joined(separator: ", ")
              + "; compressed \(m.pagesCompressed ?? 0) pages, \(m.compressedRawBytes ?? 0) → \(m.compressedWireBytes ?? 0) B")
        expectVerified(lab, container, move, processes: 2)
    }
}
