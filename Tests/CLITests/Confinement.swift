import API
import Foundation
import GodwitCore
import Testing

/// What issue 17's acceptance checks on a running unprivileged container, from the host and
/// from inside: its id map, who owns what its root creates, the bounding set, the seccomp
/// filter, and what root inside is refused (confine-probe, workloads/confine-probe.c).
enum Confinement {
    /// capabilities(7) numbers Godwit drops by default: sys_module, sys_rawio, sys_time,
    /// mac_override, mac_admin.
    static let droppedByDefault = [16, 17, 25, 32, 33]
    /// What the default filter denies, with EPERM.
    static let deniedByDefault = ["kexec_load", "init_module", "finit_module", "delete_module",
                                  "open_by_handle_at", "keyctl", "add_key"]

    /// /proc/PID/status fields of the container's init, as the host reads them.
    static func status(_ pid: Int32) -> [String: String] {
        var fields: [String: String] = [:]
        for line in (HostEnvironment.read("/proc/\(pid)/status") ?? "").split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 1)
            if parts.count == 2 { fields[String(parts[0])] = parts[1].trimmingCharacters(in: .whitespaces) }
        }
        return fields
    }

    static func probe(_ lab: MoveLab, _ host: String, _ name: String, path: String = "confine-probe") throws -> [String: String] {
        let result = try lab.sh(host, name, path)
        try #require(result.succeeded, "confine-probe in \(name) on \(host): \(result.stderr)")
        var answers: [String: String] = [:]
        for line in result.stdout.split(separator: "\n") {
            let parts = line.split(separator: "=", maxSplits: 1)
            if parts.count == 2 { answers[String(parts[0])] = String(parts[1]) }
        }
        return answers
    }

    /// Every acceptance check of an unprivileged container `name` on `host`; returns its base.
    @discardableResult
    static func expectConfined(_ lab: MoveLab, _ host: String, _ name: String, probePath: String = "confine-probe",
                               extraDeniedSyscalls: [String] = [], extraDroppedCapabilities: [Int] = [],
                               sourceLocation: SourceLocation = #_sourceLocation) throws -> UInt32 {
        let info = try #require(try lab.container(host, name), "\(name) is not on \(host)", sourceLocation: sourceLocation)
        let pid = try #require(info.pid, "\(name) has no init", sourceLocation: sourceLocation)
        let base = try #require(info.config["volatile.idmap.base"].flatMap { UInt32($0) },
                                "\(name) has no id map: \(info.config)", sourceLocation: sourceLocation)
        let expectedMap = "0 \(base) 65536"
        func normalised(_ text: String) -> String { text.split(whereSeparator: \.isWhitespace).joined(separator: " ") }
        // The map, from the host and from inside (its init's view of itself).
        #expect(normalised(HostEnvironment.read("/proc/\(pid)/uid_map") ?? "") == expectedMap, sourceLocation: sourceLocation)
        #expect(normalised(HostEnvironment.read("/proc/\(pid)/gid_map") ?? "") == expectedMap, sourceLocation: sourceLocation)
        let inside = try lab.sh(host, name, "cat /proc/1/uid_map")
        #expect(normalised(inside.stdout) == expectedMap, "uid_map inside: \(inside.stdout)", sourceLocation: sourceLocation)
        #expect(try lab.sh(host, name, "id -u").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "0",
                sourceLocation: sourceLocation)

        // A file root makes inside is the map's base on the host (in the overlay's upper dir).
        let file = "/root/.godwit-owner-\(UUID().uuidString.prefix(8))"
        try #require(try lab.sh(host, name, "mkdir -p /root && touch \(file) && stat -c %u:%g \(file)").stdout
                        .trimmingCharacters(in: .whitespacesAndNewlines) == "0:0", sourceLocation: sourceLocation)
        var st = stat()
        let onHost = lab.stateDirectory(host) + "/containers/\(name)/upper" + file
        #expect(stat(onHost, &st) == 0 && st.st_uid == base && st.st_gid == base,
                "\(onHost) is owned by \(st.st_uid):\(st.st_gid), not \(base)", sourceLocation: sourceLocation)
        _ = try lab.sh(host, name, "rm -f \(file)")

        // Bounding set and filter, on the init.
        let fields = status(pid)
        let capBnd = UInt64(fields["CapBnd"] ?? "", radix: 16) ?? UInt64.max
        for bit in droppedByDefault + extraDroppedCapabilities {
            #expect(capBnd & (UInt64(1) << UInt64(bit)) == 0, "CapBnd \(fields["CapBnd"] ?? "?") has capability \(bit)",
                    sourceLocation: sourceLocation)
        }
        #expect(fields["Seccomp"] == "2", "Seccomp: \(fields["Seccomp"] ?? "?")", sourceLocation: sourceLocation)

        // What root inside is refused: denied syscalls with EPERM, no module, no clock, no
        // block device node.
        let answers = try probe(lab, host, name, path: probePath)
        for call in deniedByDefault + extraDeniedSyscalls {
            #expect(answers[call] == "EPERM", "\(call) inside \(name): \(answers[call] ?? "no answer")", sourceLocation: sourceLocation)
        }
        #expect(answers["clock_settime"] == "EPERM", "clock_settime: \(answers["clock_settime"] ?? "?")", sourceLocation: sourceLocation)
        #expect(answers["mknod_block"] == "EPERM", "mknod of a block device: \(answers["mknod_block"] ?? "?")",
                sourceLocation: sourceLocation)
        return base
    }
}
