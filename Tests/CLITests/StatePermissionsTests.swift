import Foundation
import GodwitCore
import Testing

/// A real daemon keeps its state root-only, and mounts containers' root filesystems so that
/// nothing setuid and no device node in them works, before and after a checkpoint/restore.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct StatePermissionsTests {
    @Test func stateIsRootOnlyAndRootfsIsNosuidNodevAcrossACheckpoint() throws {
        let f = try RealDaemonFixture()
        defer { f.tearDown() }
        // The fixture made the state directory 0755: the daemon tightens what exists.
        let launch = try f.godwit(["launch", "busybox", "c1"])
        try #require(launch.succeeded, "launch: \(launch.stderr)\n\(f.logText)")
        for dir in ["", "/images", "/containers", "/migrations"] {
            #expect(Self.mode(f.stateDir + dir) == 0o700, "\(f.stateDir + dir) is \(String(Self.mode(f.stateDir + dir) ?? 0, radix: 8))")
        }
        #expect(Self.mode(f.stateDir + "/godwit.db") == 0o600)
        try expectNosuidNodev(f, "c1")

        let stop = try f.godwit(["stop", "--stateful", "c1"])
        try #require(stop.succeeded, "stop --stateful: \(stop.stderr)\n\(f.logText)")
        let images = f.containersDirectory + "/c1/checkpoint"
        #expect(Self.mode(images) == 0o700)
        let files = try FileManager.default.contentsOfDirectory(atPath: images)
        #expect(files.contains("inventory.img"))
        let readable = files.filter { Self.mode(images + "/" + $0) != 0o600 }
        #expect(readable.isEmpty, "image files not 0600: \(readable)")

        // CRIU restores into the nosuid,nodev mount and keeps the flags on the container's /.
        let start = try f.godwit(["start", "c1"])
        try #require(start.succeeded, "start: \(start.stderr)\n\(f.logText)")
        try expectNosuidNodev(f, "c1")
        #expect(Self.mode(f.stateDir + "/godwit.db") == 0o600, "SQLite kept the database's mode")
    }

    func expectNosuidNodev(_ f: RealDaemonFixture, _ name: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let rootfs = f.containersDirectory + "/\(name)/rootfs"
        let host = Self.mountOptions(at: rootfs, in: HostEnvironment.read("/proc/self/mountinfo") ?? "")
        #expect(host.map { $0.contains("nosuid") && $0.contains("nodev") } == true,
                "the host's mount of \(rootfs): \(host ?? [])", sourceLocation: sourceLocation)
        let inside = Self.mountOptions(at: "/", in: try f.sh(name, "cat /proc/self/mountinfo").stdout)
        #expect(inside.map { $0.contains("nosuid") && $0.contains("nodev") } == true,
                "the container's /: \(inside ?? [])", sourceLocation: sourceLocation)
    }

    static func mode(_ path: String) -> mode_t? {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : nil
    }

    /// The per-mount options (field 6 of mountinfo) of the last mount at `mountPoint`: the
    /// one on top.
    static func mountOptions(at mountPoint: String, in mountinfo: String) -> [String]? {
        let escaped = mountPoint.replacingOccurrences(of: " ", with: "\\040")
        let lines: [[Substring]] = mountinfo.split(separator: "\n").map { $0.split(separator: " ") }
        guard let line = lines.last(where: { $0.count > 5 && $0[4] == escaped }) else { return nil }
        return line[5].split(separator: ",").map(String.init)
    }
}
