import Foundation
import GodwitCore
import Runtime

/// Whether this host can run unprivileged containers (each in a user namespace whose ids
/// 0..65535 are a slot of the subordinate range, its image seen through an idmapped mount)
/// and move them lazily. `godwit check` prints it; a move's planner reads `userfaultfd`
/// from the destination's answer.
public struct UnprivilegedReport: Codable, Sendable {
    /// max_user_namespaces > 0 and one was created with a map written.
    public var userNamespaces: ProbeResult
    /// Where the idmapped mount was tried: the images directory, or before the daemon made
    /// it the nearest directory that exists (the images will live on its file system).
    public var imagesDirectory: String
    /// That directory's file system type as mountinfo names it ("ext4"); nil when unknown.
    public var fileSystem: String?
    /// A file owned by 0 there shows as the range's first id through an idmapped mount.
    public var idmappedMounts: ProbeResult
    public var subordinateRange: SubordinateRangeReport
    /// vm.unprivileged_userfaultfd=1: CRIU's lazy restore (pre-copy's end, post-copy,
    /// hybrid) opens a userfaultfd inside the container's user namespace.
    public var userfaultfd: ProbeResult
    /// Not failures, but worth fixing (a default range nothing reserves).
    public var warnings: [String]
    /// User namespaces, idmapped mounts and a safe range: unprivileged containers start.
    public var supported: Bool
}

public struct SubordinateRangeReport: Codable, Sendable, Equatable {
    public var start: UInt32
    public var count: UInt32
    /// "/etc/subuid", or "default" when root has no entry there and in /etc/subgid.
    public var source: String
    /// How many containers it holds: each gets its own slot of 65536 ids.
    public var slots: UInt32
    /// Fails when a host user or group has an id inside it: it would own container files.
    public var usable: ProbeResult
}

public enum UnprivilegedProbe {
    public static func run(stateDirectory: String, spawnHelper: String,
                           range: SubordinateRange = .host()) -> UnprivilegedReport {
        let directory = imagesFileSystemDirectory(stateDirectory: stateDirectory)
        let images = URL(fileURLWithPath: stateDirectory).appendingPathComponent("images").standardizedFileURL.path
        let userNamespaces = probeUserNamespaces()
        let idmapped = probeIdmappedMount(in: directory, base: range.start, helper: spawnHelper,
                                          place: directory == images ? directory : "\(directory) (\(images) doesn't exist yet)")
        let rangeReport = checkRange(range, passwd: HostEnvironment.read("/etc/passwd") ?? "",
                                     group: HostEnvironment.read("/etc/group") ?? "")
        var warnings: [String] = []
        if range.source == SubordinateRange.fallback.source {
            // useradd gives each new user 65536 subordinate ids from 100000 up: without an
            // entry of root's, nothing stops it handing out the ids containers use.
            warnings.append("root has no range in /etc/subuid and /etc/subgid, so the default \(range) is used and nothing reserves it: add `root:\(range.start):\(range.count)` to both files")
        }
        return UnprivilegedReport(
            userNamespaces: userNamespaces, imagesDirectory: directory, fileSystem: fileSystemType(of: directory),
            idmappedMounts: idmapped, subordinateRange: rangeReport,
            userfaultfd: userfaultfd(sysctl: HostEnvironment.read("/proc/sys/vm/unprivileged_userfaultfd")),
            warnings: warnings,
            supported: userNamespaces.available && idmapped.available && rangeReport.usable.available)
    }

    /// The sysctl first (0 disables user namespaces outright, whatever the rest says), then
    /// a namespace made and given a map, as a container's start does.
    static func probeUserNamespaces() -> ProbeResult {
        let limit = HostEnvironment.read("/proc/sys/user/max_user_namespaces")
        guard let limit, let max = Int(limit) else { return .no("/proc/sys/user/max_user_namespaces is missing: no user namespaces in this kernel") }
        guard max > 0 else { return .no("user.max_user_namespaces is 0: set it above 0 (sysctl user.max_user_namespaces=15000)") }
        guard let result = try? Command.run(["unshare", "--user", "--map-root-user", "cat", "/proc/self/uid_map"]) else {
            return .no("`unshare` not found: run `make setup`")
        }
        guard result.succeeded, !result.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            return .no("max_user_namespaces \(max), but creating one failed: \(result.lastErrorLine)")
        }
        return .yes("max_user_namespaces \(max); one created and its id map written")
    }

    /// STATE/images when it exists; else the nearest existing ancestor, whose file system
    /// the daemon will create it on. `godwit check` must not create the state directory.
    static func imagesFileSystemDirectory(stateDirectory: String) -> String {
        var path = URL(fileURLWithPath: stateDirectory).appendingPathComponent("images").standardizedFileURL.path
        var isDirectory: ObjCBool = false
        while path != "/", !(FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) && isDirectory.boolValue) {
            path = (path as NSString).deletingLastPathComponent
        }
        return path
    }

    /// What a container's start does to its image, on the images' own file system: a file
    /// owned by 0 must show as `base` through `godwit-spawn idmap`. The mount is made in a
    /// private mount namespace of its own, so it can't outlive the probe or show up in
    /// anyone else's mounts even if the probe is killed; the directory goes in any case.
    static func probeIdmappedMount(in directory: String, base: UInt32, helper: String, place: String? = nil) -> ProbeResult {
        let fs = fileSystemType(of: directory) ?? "unknown file system"
        let at = "\(fs) at \(place ?? directory)"
        guard HostEnvironment.isRoot else { return .no("not measured on \(at): idmapped mounts need root") }
        guard FileManager.default.isExecutableFile(atPath: helper) else {
            return .no("godwit-spawn not found at \(helper): it must sit beside godwit")
        }
        let scratch = URL(fileURLWithPath: directory).appendingPathComponent(".godwit-check-\(UUID().uuidString.prefix(8))")
        let lower = scratch.appendingPathComponent("lower"), mountPoint = scratch.appendingPathComponent("mnt")
        defer {
            // Belt and braces: the namespace took the mount with it; EINVAL when it did.
            umount2(mountPoint.path, Int32(MNT_DETACH))
            try? FileManager.default.removeItem(at: scratch)
        }
        let file = lower.appendingPathComponent("probe")
        do {
            try FileManager.default.createDirectory(at: lower, withIntermediateDirectories: true)
            try FileManager.default.createDirectory(at: mountPoint, withIntermediateDirectories: false)
            guard FileManager.default.createFile(atPath: file.path, contents: nil), chown(file.path, 0, 0) == 0 else {
                throw GodwitError.errno("creating \(file.path) owned by 0")
            }
        } catch {
            return .no("\(at): can't make a scratch directory there: \(error)")
        }
        let script = #"set -e; "$1" idmap --map "$2:65536" "$3" "$4"; stat -c '%u:%g' "$4/probe"; umount "$4""#
        let argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
                    helper, String(base), lower.path, mountPoint.path]
        guard let result = try? Command.run(argv) else { return .no("`unshare` not found: run `make setup`") }
        guard result.succeeded else { return .no("\(at): \(result.lastErrorLine)") }
        let owner = result.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        guard owner == "\(base):\(base)" else {
            return .no("\(at): a file owned by 0:0 shows as \(owner) through the idmapped mount, not \(base):\(base)")
        }
        return .yes("\(at): a file owned by 0 shows as \(base) through the idmapped mount")
    }

    /// The range as `godwit check` reports it: failing when a host user or group has an id
    /// inside it, since that account would own the files of some container's root.
    static func checkRange(_ range: SubordinateRange, passwd: String, group: String) -> SubordinateRangeReport {
        let users = accounts(inside: range, passwd), groups = accounts(inside: range, group)
        let summary = "\(range) (\(range.source)): \(range.slots) slots of \(IdMap.defaultCount) ids"
        var clashes: [String] = []
        if !users.isEmpty { clashes.append("users " + users.joined(separator: ", ")) }
        if !groups.isEmpty { clashes.append("groups " + groups.joined(separator: ", ")) }
        let usable: ProbeResult = clashes.isEmpty ? .yes(summary)
            : .no("\(summary), but host \(clashes.joined(separator: " and ")) have ids inside it and would own container files: give root a range no account uses in /etc/subuid and /etc/subgid")
        return SubordinateRangeReport(start: range.start, count: range.count, source: range.source, slots: range.slots, usable: usable)
    }

    /// "name (id)" of every /etc/passwd or /etc/group entry whose id (the third field in
    /// both) lies in `range`.
    static func accounts(inside range: SubordinateRange, _ text: String) -> [String] {
        text.split(separator: "\n").compactMap { line in
            let f = line.split(separator: ":", omittingEmptySubsequences: false)
            guard f.count >= 3, !line.hasPrefix("#"), let id = UInt32(f[2]),
                  id >= range.start, UInt64(id) < UInt64(range.start) + UInt64(range.count) else { return nil }
            return "\(f[0]) (\(id))"
        }
    }

    static func userfaultfd(sysctl value: String?) -> ProbeResult {
        switch value {
        case "1"?:
            return .yes("vm.unprivileged_userfaultfd=1: unprivileged containers move lazily too (pre-copy, post-copy, hybrid)")
        case let value?:
            return .no("vm.unprivileged_userfaultfd=\(value): unprivileged containers move only by stop-and-copy (CRIU's lazy restore opens a userfaultfd inside their user namespace): run `make setup` or `sysctl vm.unprivileged_userfaultfd=1`")
        case nil:
            return .no("vm.unprivileged_userfaultfd is missing (a kernel without userfaultfd?): unprivileged containers move only by stop-and-copy")
        }
    }

    /// The type mountinfo gives the mount holding `path`: any line with the same device
    /// (bind mounts of one file system share it) names the same type.
    static func fileSystemType(of path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0, let mountinfo = HostEnvironment.read("/proc/self/mountinfo") else { return nil }
        return fileSystemType(device: UInt64(info.st_dev), mountinfo: mountinfo)
    }

    static func fileSystemType(device: UInt64, mountinfo: String) -> String? {
        // glibc's gnu_dev_major/minor encoding; Swift doesn't import the macros.
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~UInt64(0xfff))
        let minor = (device & 0xff) | ((device >> 12) & ~UInt64(0xff))
        for line in mountinfo.split(separator: "\n") {
            let f = line.split(separator: " ")
            // "ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPEROPTIONS"
            guard f.count > 3, f[2] == "\(major):\(minor)", let dash = f.dropFirst(6).firstIndex(of: "-"), dash + 1 < f.count else { continue }
            return String(f[dash + 1])
        }
        return nil
    }
}
