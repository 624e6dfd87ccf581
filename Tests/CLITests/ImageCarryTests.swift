import API
import Foundation
import GodwitCore
import Testing

/// `godwit move` to a host that lacks the container's image: the move carries the image
/// (phase "image") and the destination installs it under the same fingerprint; no manual
/// import. A host that has the image (under any alias) gets no image phase.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct ImageCarryTests {
    func move(_ lab: MoveLab, _ name: String, from: String, to: String, mode: String) throws -> MoveReport {
        let result = try lab.on(from, ["move"], [name, "\(to):", "--mode", mode, "--format", "json"])
        try #require(result.succeeded, "move \(from) -> \(to) (\(mode)) failed: \(result.stderr)")
        return try APICoding.decoder().decode(MoveReport.self, from: Data(result.stdout.utf8))
    }

    func images(_ lab: MoveLab, _ host: String) throws -> [ImageInfo] {
        let result = try lab.on(host, ["image", "list"], ["--format", "json"])
        try #require(result.succeeded, "image list on \(host): \(result.stderr)")
        return try APICoding.decoder().decode([ImageInfo].self, from: Data(result.stdout.utf8))
    }

    /// A tarball of h1's busybox image plus a marker file: another image (its own fingerprint).
    func makeTarball(_ lab: MoveLab, marker: String, into path: String) throws {
        let busybox = try #require(try images(lab, "h1").first { $0.alias == "busybox" })
        let rootfs = lab.stateDirectory("h1") + "/images/\(busybox.fingerprint)/rootfs"
        let copy = path + ".d"
        defer { try? FileManager.default.removeItem(atPath: copy) }
        try Command.check(["cp", "-a", rootfs, copy])
        try Data("\(marker)\n".utf8).write(to: URL(fileURLWithPath: copy + "/etc/tiny-marker"))
        try Command.check(["tar", "-C", copy, "--numeric-owner", "-czf", path, "."])
    }

    func expectRuns(_ lab: MoveLab, _ host: String, marker: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let info = try #require(try lab.container(host, "c1"), "c1 is not on \(host)", sourceLocation: sourceLocation)
        #expect(info.status == .running, sourceLocation: sourceLocation)
        let files = try lab.sh(host, "c1", "cat /root/hello /etc/tiny-marker")
        #expect(files.stdout == "written on h1\n\(marker)\n", "files in c1 on \(host): \(files.stdout) \(files.stderr)",
                sourceLocation: sourceLocation)
        let before = try lab.sh(host, "c1", "cat /tmp/counter").stdout
        #expect(waitUntil { (try? lab.sh(host, "c1", "cat /tmp/counter").stdout) != before }, "c1's counter stopped on \(host)",
                sourceLocation: sourceLocation)
    }

    @Test func aMoveCarriesTheImageTheDestinationLacks() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let scratch = lab.stateRoot + "-images"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        #expect(try lab.on("h1", ["launch"], ["busybox", "seed"]).succeeded)
        try makeTarball(lab, marker: "tiny image", into: scratch + "/tiny.tar.gz")
        let imported = try lab.on("h1", ["image", "import"], [scratch + "/tiny.tar.gz", "--alias", "tiny"])
        try #require(imported.succeeded, "import: \(imported.stderr)")
        let tiny = try #require(try images(lab, "h1").first { $0.alias == "tiny" })
        #expect(try images(lab, "h2").allSatisfy { $0.fingerprint != tiny.fingerprint })

        #expect(try lab.on("h1", ["launch"], ["tiny", "c1"]).succeeded)
        _ = try lab.sh("h1", "c1", "echo written on h1 > /root/hello")
        _ = try lab.sh("h1", "c1", "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done </dev/null >/dev/null 2>&1 &")

        // h2 lacks the image: the move carries it first.
        var report = try move(lab, "c1", from: "h1", to: "h2", mode: "stop-and-copy")
        let phase = try #require(report.phases.first { $0.name == "image" }, "no image phase: \(report.phases.map(\.name))")
        #expect(report.phases.first?.name == "negotiation" && report.phases.dropFirst().first?.name == "image")
        #expect(phase.bytes > 1 << 20, "the image phase sent \(phase.bytes) bytes")
        try expectRuns(lab, "h2", marker: "tiny image")
        let received = try #require(try images(lab, "h2").first { $0.fingerprint == tiny.fingerprint }, "h2 has no image \(tiny.fingerprint)")
        #expect(received.alias == "tiny")
        #expect(received.description.contains("h1"), "\(received.description)")
        #expect(try lab.container("h2", "c1")?.image == "tiny")

        // Back to h1, which has the image: no image phase.
        report = try move(lab, "c1", from: "h2", to: "h1", mode: "stop-and-copy")
        #expect(!report.phases.contains { $0.name == "image" }, "\(report.phases.map(\.name))")
        try expectRuns(lab, "h1", marker: "tiny image")

        // h2 drops the image and gives its alias to another one: a live move carries it
        // again, under "tiny-<fingerprint prefix>".
        #expect(try lab.on("h2", ["image", "delete"], ["tiny"]).succeeded)
        try makeTarball(lab, marker: "another image", into: scratch + "/other.tar.gz")
        #expect(try lab.on("h2", ["image", "import"], [scratch + "/other.tar.gz", "--alias", "tiny"]).succeeded)
        report = try move(lab, "c1", from: "h1", to: "h2", mode: "pre-copy")
        #expect(report.phases.contains { $0.name == "image" }, "\(report.phases.map(\.name))")
        try expectRuns(lab, "h2", marker: "tiny image")
        let renamed = try #require(try images(lab, "h2").first { $0.fingerprint == tiny.fingerprint })
        #expect(renamed.alias == "tiny-" + tiny.fingerprint.prefix(12))
        #expect(try lab.container("h2", "c1")?.image == renamed.alias)
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: lab.stateDirectory("h2") + "/images")
        #expect(!leftovers.contains { $0.hasPrefix(".incoming-") }, "staging left: \(leftovers)")
    }
}
