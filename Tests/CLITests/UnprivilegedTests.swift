import API
import Foundation
import GodwitCore
import Runtime
import Testing

/// Issue 17: containers are unprivileged by default, and keep their id map, bounding set
/// and seccomp filter through a live move in every mode.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct UnprivilegedTests {
    static let modes = ["stop-and-copy", "pre-copy", "post-copy", "hybrid"]

    func move(_ lab: MoveLab, _ name: String, from: String, to: String, mode: String) throws -> CommandResult {
        try lab.on(from, ["move"], [name, "\(to):", "--mode", mode])
    }

    @Test func aBusyboxContainerIsUnprivilegedAndStaysConfinedThroughEveryMode() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "u1", host: "h1", memoryMiB: 32)
        defer { workload.stop() }
        let base = try Confinement.expectConfined(lab, "h1", "u1")
        let info = try lab.on("h1", ["info"], ["u1"])
        #expect(info.stdout.contains("0 \(base) 65536 (unprivileged)"), "info lacks the map: \(info.stdout)")

        for mode in Self.modes {
            for (from, to) in [("h1", "h2"), ("h2", "h1")] {
                let moved = try move(lab, "u1", from: from, to: to, mode: mode)
                try #require(moved.succeeded, "move \(from) -> \(to) (\(mode)): \(moved.stderr)")
                // The same map on the destination, and everything it confines.
                #expect(try Confinement.expectConfined(lab, to, "u1") == base, "the map changed in the \(mode) move")
                try workload.expectHealthy(on: to)
                #expect(lab.mounts(from, "u1").isEmpty, "mounts left on \(from): \(lab.mounts(from, "u1"))")
            }
        }
    }

    @Test func keysOptOutAndAddRulesAndTheMapIsTheDaemons() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        // More denied and dropped than the defaults.
        let tight = try lab.on("h1", ["launch"], ["busybox", "k1", "-c", "security.syscalls.deny=sethostname",
                                                  "-c", "security.capabilities.drop=CAP_NET_RAW"])
        try #require(tight.succeeded, "launch k1: \(tight.stderr)")
        let k1 = try Confinement.expectConfined(lab, "h1", "k1", extraDeniedSyscalls: ["sethostname"], extraDroppedCapabilities: [13])
        // The same keys move with the container and the rules stay (CRIU restores the filter).
        try #require(try move(lab, "k1", from: "h1", to: "h2", mode: "hybrid").succeeded)
        #expect(try Confinement.expectConfined(lab, "h2", "k1", extraDeniedSyscalls: ["sethostname"],
                                               extraDroppedCapabilities: [13]) == k1)

        // Opting out: no user namespace, a warning, still the bounding set and filter.
        let privileged = try lab.on("h1", ["launch"], ["busybox", "p1", "-c", "security.privileged=true"])
        try #require(privileged.succeeded, "launch p1: \(privileged.stderr)")
        #expect(privileged.stderr.contains("warning: p1 is privileged"), "no warning: \(privileged.stderr)")
        let p1 = try #require(try lab.container("h1", "p1"))
        #expect(p1.config["volatile.idmap.base"] == nil)
        let map = try lab.sh("h1", "p1", "cat /proc/1/uid_map").stdout.split(whereSeparator: \.isWhitespace)
        #expect(map == ["0", "0", "4294967295"], "p1's uid_map: \(map)")
        #expect(try Confinement.probe(lab, "h1", "p1")["keyctl"] == "EPERM")

        // Each container has its own range.
        let u2 = try lab.on("h1", ["launch"], ["busybox", "u2"])
        try #require(u2.succeeded)
        let u2Base = try #require(try lab.container("h1", "u2")?.config["volatile.idmap.base"])
        #expect(u2Base != String(k1))

        // The map is the daemon's; privilege is chosen at launch.
        let setBase = try lab.on("h1", ["config", "set"], ["u2", "volatile.idmap.base", "1000000"])
        #expect(!setBase.succeeded && setBase.stderr.contains("set by the daemon"), "\(setBase.stderr)")
        let launchBase = try lab.on("h1", ["launch"], ["busybox", "u3", "-c", "volatile.idmap.base=1000000"])
        #expect(!launchBase.succeeded && launchBase.stderr.contains("set by the daemon"), "\(launchBase.stderr)")
        let flip = try lab.on("h1", ["config", "set"], ["u2", "security.privileged", "true"])
        #expect(!flip.succeeded && flip.stderr.contains("only be set at launch"), "\(flip.stderr)")
        let badName = try lab.on("h1", ["config", "set"], ["u2", "security.syscalls.deny", "no_such_call"])
        #expect(!badName.succeeded && badName.stderr.contains("unknown syscall 'no_such_call'"), "\(badName.stderr)")

        // A destination where the container's range is taken refuses the move before copying
        // anything, and the container runs on where it was. A name whose search starts at
        // u2's slot gets that slot on h2 (h2 has nothing else).
        let range = SubordinateRange.host()
        let slot = try #require(UInt32(u2Base).map { ($0 - range.start) / IdMap.defaultCount })
        let squatter = try #require((0..<200_000).lazy.map { "s\($0)" }.first { range.preferredSlot(for: $0) == slot })
        try #require(try lab.on("h2", ["launch"], ["busybox", squatter]).succeeded)
        #expect(try lab.container("h2", squatter)?.config["volatile.idmap.base"] == u2Base)
        let refused = try move(lab, "u2", from: "h1", to: "h2", mode: "stop-and-copy")
        #expect(!refused.succeeded && refused.stderr.contains("which container '\(squatter)' has on h2"), "\(refused.stderr)")
        #expect(try lab.container("h1", "u2")?.status == .running, "u2 does not run on h1 after the refusal")
        #expect(try lab.container("h2", "u2") == nil)
    }
}
