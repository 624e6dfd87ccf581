import Foundation
import GodwitCore
import Testing

/// `godwit check`'s unprivileged section, measured for real on this machine: the built CLI
/// makes a user namespace and an idmapped mount on the state directory's images/ file
/// system, as a container's start does.
@Suite(.serialized, .enabled(if: geteuid() == 0, "idmapped mounts need root"))
struct UnprivilegedCheckTests {
    /// The section as `--format json` prints it (decoded here, as a script would).
    struct Probe: Decodable { var available: Bool; var detail: String }
    struct RangeSection: Decodable { var start: UInt32; var count: UInt32; var source: String; var slots: UInt32; var usable: Probe }
    struct Section: Decodable {
        var userNamespaces: Probe
        var imagesDirectory: String
        var fileSystem: String?
        var idmappedMounts: Probe
        var subordinateRange: RangeSection
        var userfaultfd: Probe
        var warnings: [String]
        var supported: Bool
    }
    struct Report: Decodable { var unprivileged: Section }

    static func section(_ result: CommandResult) throws -> Section {
        try #require(result.succeeded, "godwit check: \(result.stderr)")
        return try JSONDecoder().decode(Report.self, from: Data(result.stdout.utf8)).unprivileged
    }

    /// Whatever happens to the probe or the test, nothing may stay mounted under `dir`.
    static func mountsUnder(_ dir: String) -> [String] {
        (HostEnvironment.read("/proc/self/mountinfo") ?? "").split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ")
            return f.count > 4 && (f[4] == dir || f[4].hasPrefix(dir + "/")) ? String(f[4]) : nil
        }
    }

    static func unmountAll(under dir: String) {
        for point in mountsUnder(dir).reversed() { umount2(point, Int32(MNT_DETACH)) }
    }

    @Test func sectionReportsWhatThisHostMeasures() throws {
        let state = try StateDir()
        defer { Self.unmountAll(under: state.path) }
        let images = state.path + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)

        let u = try Self.section(try godwit(["check", "--format", "json"], dir: state.path))

        #expect(u.userNamespaces.available, "\(u.userNamespaces.detail)")
        let limit = HostEnvironment.read("/proc/sys/user/max_user_namespaces") ?? "?"
        #expect(u.userNamespaces.detail.contains("max_user_namespaces \(limit)"), "\(u.userNamespaces.detail)")

        // The images' own directory, with the type util-linux sees for it.
        #expect(u.imagesDirectory == images)
        let fsType = try Command.run(["findmnt", "-n", "-o", "FSTYPE", "--target", images]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(u.fileSystem == fsType)
        #expect(u.idmappedMounts.available, "\(u.idmappedMounts.detail)")
        let r = u.subordinateRange
        #expect(u.idmappedMounts.detail.contains("\(fsType) at \(images)"), "\(u.idmappedMounts.detail)")
        #expect(u.idmappedMounts.detail.contains("shows as \(r.start)"), "\(u.idmappedMounts.detail)")
        // The probe's scratch directory and mount are gone.
        #expect(try FileManager.default.contentsOfDirectory(atPath: images).isEmpty)
        #expect(Self.mountsUnder(state.path).isEmpty)

        // The range: /etc/subuid's when root has one there, else the default; its slots.
        let hasSubuid = (HostEnvironment.read("/etc/subuid") ?? "").split(separator: "\n")
            .contains { $0.hasPrefix("root:") || $0.hasPrefix("0:") }
        #expect(r.source == (hasSubuid ? "/etc/subuid" : "default"))
        if !hasSubuid { #expect(r.start == 1_000_000 && r.count == 1_000_000_000) }
        #expect(r.slots == r.count / 65536)
        #expect(r.usable.detail.contains("\(r.start):\(r.count) (\(r.source)): \(r.slots) slots of 65536 ids"), "\(r.usable.detail)")
        #expect(r.source != "default" || u.warnings.contains { $0.contains("/etc/subuid") })

        let sysctl = HostEnvironment.read("/proc/sys/vm/unprivileged_userfaultfd")
        #expect(u.userfaultfd.available == (sysctl == "1"), "\(u.userfaultfd.detail)")
        #expect(u.userfaultfd.detail.hasPrefix("vm.unprivileged_userfaultfd=\(sysctl ?? "?")"), "\(u.userfaultfd.detail)")
        #expect(u.supported == r.usable.available)

        // The same, as people read it.
        let text = try godwit(["check"], dir: state.path)
        try #require(text.succeeded, "\(text.stderr)")
        for row in ["user namespaces", "idmapped mounts", "subordinate ids", "lazy moves"] {
            #expect(text.stdout.split(separator: "\n").contains { $0.hasPrefix(row) }, "no \(row) row in:\n\(text.stdout)")
        }
        #expect(text.stdout.contains("Unprivileged containers  \(u.supported ? "yes" : "no")"), "\(text.stdout)")
    }

    /// ramfs takes no idmapped mounts: the section says so with the helper's error line, and
    /// the host still runs (privileged) containers, so check still succeeds. The ramfs lives
    /// in a mount namespace of this test's own: it can't outlive the test.
    @Test func aFileSystemWithoutIdmappedMountsIsNamedWithTheHelpersError() throws {
        let state = try StateDir()
        defer { Self.unmountAll(under: state.path) }
        let script = #"set -e; mount -t ramfs none "$1"; mkdir "$1/images"; GODWIT_DIR="$1" "$2" check --format json"#
        let result = try Command.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                                      state.path, Built.path("godwit")])
        let u = try Self.section(result)
        #expect(u.fileSystem == "ramfs")
        #expect(!u.idmappedMounts.available)
        #expect(u.idmappedMounts.detail.contains("ramfs at \(state.path)/images: godwit-spawn: idmapping"), "\(u.idmappedMounts.detail)")
        #expect(!u.supported)
        #expect(Self.mountsUnder(state.path).isEmpty)
    }
}
