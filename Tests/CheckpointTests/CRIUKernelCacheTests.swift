import Checkpoint
import Foundation
import GodwitCore
import Testing

@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct CRIUKernelCacheTests {
    /// On a host whose /run is not a tmpfs CRIU never keeps its kernel-feature cache; after
    /// `prepare` it finds and loads one, so its runs in a move's frozen window skip the probe.
    @Test func criuLoadsThePreparedCacheAndLeavesNoMountBehind() throws {
        let criu = try CRIUBinary.locate()
        let outcome = CRIUKernelCache.prepare(criu: criu)
        if outcome.contains("/run is a tmpfs") { return }  // CRIU does it by itself there
        #expect(outcome.contains("written"), "\(outcome)")
        #expect((FileManager.default.contents(atPath: CRIUKernelCache.path)?.count ?? 0) > 0)
        let run = try Command.run([criu.path, "check", "-v4"])
        #expect((run.stdout + run.stderr).contains("Loaded kdat cache from \(CRIUKernelCache.path)"),
                "\((run.stdout + run.stderr).split(separator: "\n").prefix(20).joined(separator: "\n"))")
        #expect(!(HostEnvironment.read("/proc/self/mountinfo") ?? "").contains("godwit-kdat"), "the scratch tmpfs is still mounted")
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: "/run")) ?? []).allSatisfy { !$0.hasPrefix("godwit-kdat") })
    }
}
