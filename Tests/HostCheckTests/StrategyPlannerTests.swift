import Testing
import Checkpoint
import GodwitCore
@testable import HostCheck

@Suite struct StrategyPlannerTests {
    // This machine kind: no soft-dirty, working uffd-wp.
    func inputs(criu: Bool = true, lazy: Bool = true, pipes: Bool = true, softDirty: Bool = false,
                uffd: Bool = true, readv: Bool = true) -> StrategyPlanner.Inputs {
        func p(_ ok: Bool, _ why: String) -> ProbeResult { ok ? .yes("ok") : .no(why) }
        return .init(criu: p(criu, "not found"), criuLazyPages: p(lazy, "no uffd"), namespaces: .yes("ok"),
                     pipeSize: p(pipes, "pipe-max-size 1048576"), softDirty: p(softDirty, "no bit 55"),
                     uffdWPTracking: p(uffd, "EPERM from seccomp"), processVMReadv: p(readv, "EPERM"))
    }

    func support(_ s: [StrategySupport], _ k: MigrationStrategy) -> StrategySupport { s.first { $0.strategy == k }! }

    @Test func everythingOnAKernelWithoutSoftDirty() {
        let inputs = inputs()
        #expect(StrategyPlanner.dirtyTracker(inputs) == .uffdWP)
        for s in StrategyPlanner.strategies(inputs) {
            #expect(s.source.available, "\(s.strategy) source")
            #expect(s.destination.available, "\(s.strategy) destination")
        }
    }

    @Test func trackerFallsBackInOrder() {
        #expect(StrategyPlanner.dirtyTracker(inputs(softDirty: true, uffd: false)) == .softDirty)
        #expect(StrategyPlanner.dirtyTracker(inputs(uffd: false)) == .hashing)
        #expect(StrategyPlanner.dirtyTracker(inputs(uffd: false, readv: false)) == nil)
        let none = StrategyPlanner.strategies(inputs(uffd: false, readv: false))
        #expect(!support(none, .preCopy).source.available)
        #expect(support(none, .preCopy).destination.available, "a destination needs no tracker")
        #expect(!support(none, .hybrid).source.available)
        #expect(support(none, .postCopy).source.available)
    }

    @Test func noCRIUMeansNoStrategyAndSaysWhy() {
        for s in StrategyPlanner.strategies(inputs(criu: false)) {
            #expect(!s.source.available && !s.destination.available)
            #expect(s.source.detail.contains("CRIU"))
        }
    }

    @Test func smallPipesBlockLazySourcesOnly() {
        let s = StrategyPlanner.strategies(inputs(pipes: false))
        #expect(!support(s, .postCopy).source.available)
        #expect(support(s, .postCopy).source.detail.contains("pipe-max-size"))
        #expect(support(s, .postCopy).destination.available)
        #expect(!support(s, .hybrid).source.available)
        #expect(support(s, .preCopy).source.available)
    }

    @Test func noLazyPagesBlocksLazyDestinations() {
        let s = StrategyPlanner.strategies(inputs(lazy: false))
        #expect(!support(s, .postCopy).destination.available)
        #expect(!support(s, .hybrid).destination.available)
        #expect(support(s, .stopAndCopy).destination.available)
    }
}

@Suite struct HostFactsParsingTests {
    @Test func criuVersions() {
        #expect(CRIUVersion(parsing: "Version: 4.2.1\n") == CRIUVersion(4, 2, 1))
        #expect(CRIUVersion(parsing: "Version: 3.17\nGitID: v3.17") == CRIUVersion(3, 17, 0))
        #expect(CRIUVersion(parsing: "garbage") == nil)
        #expect(CRIUVersion(4, 1, 1) < CRIUVersion.minimum)
        #expect(CRIUVersion(4, 2, 1).pageServerProtocol != CRIUVersion(4, 1, 1).pageServerProtocol)
    }

    @Test func hybridCgroupLayout() throws {
        let text = """
        35 25 0:30 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
        36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
        38 35 0:33 / /sys/fs/cgroup/freezer rw,nosuid shared:14 - cgroup cgroup rw,freezer
        39 35 0:34 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:15 - cgroup cgroup rw,cpu,cpuacct
        """
        let layout = try CgroupLayout.detect(mountinfo: text)
        #expect(layout.kind == .hybrid)
        #expect(layout.unified == "/sys/fs/cgroup/unified")
        #expect(layout.v1["freezer"] == "/sys/fs/cgroup/freezer")
        #expect(layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct")
    }

    @Test func pureV2Layout() throws {
        let layout = try CgroupLayout.detect(mountinfo: "30 25 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate")
        #expect(layout.kind == .v2)
        #expect(layout.v1["freezer"] == nil)
        #expect(layout.freezerDescription.contains("cgroup.freeze"))
    }
}
