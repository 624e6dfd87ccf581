import Foundation
import GodwitCore

/// CRIU probes the kernel's features ("kerndat", 20-65 ms measured here) at the start of
/// every run unless it finds its cache, /run/criu.kdat, and it only writes that cache on a
/// tmpfs (so that a reboot into another kernel clears it: the file holds no kernel
/// version). On hosts whose /run is not a tmpfs (this machine kind: ext4) every dump,
/// restore and lazy-pages run of a move paid the probe inside the frozen window.
///
/// godwitd calls `prepare` at start: it removes a cache an earlier boot may have left,
/// lets CRIU write a fresh one into a private tmpfs mounted over /run in a throwaway mount
/// namespace, and copies it to /run/criu.kdat, which CRIU loads without looking at the
/// file system. Safe because the daemon starts before any of its CRIU runs after a boot;
/// a foreign CRIU run between a reboot and godwitd's start would see the previous boot's
/// cache, which is why it is removed first thing.
public enum CRIUKernelCache {
    public static let path = "/run/criu.kdat"

    /// Returns what it did, for the daemon's log.
    @discardableResult
    public static func prepare(criu: CRIUBinary) -> String {
        // The file system /run is on: the last mount covering it.
        let covering = MountInfo.current().last { $0.mountPoint == "/run" || $0.mountPoint == "/" }
        if covering?.fsType == "tmpfs" { return "/run is a tmpfs: CRIU caches by itself" }
        try? FileManager.default.removeItem(atPath: path)
        let scratch = "/run/godwit-kdat.\(getpid())"
        do { try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: false, attributes: [.posixPermissions: 0o700]) } catch {
            return "cannot create \(scratch): \(error.localizedDescription)"
        }
        defer {
            _ = try? Command.run(["umount", scratch])
            try? FileManager.default.removeItem(atPath: scratch)
        }
        guard (try? Command.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", scratch]))?.succeeded == true else {
            return "cannot mount a tmpfs for CRIU's cache"
        }
        // `criu check` runs kerndat first; its verdict on other features doesn't matter here.
        _ = try? Command.run(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                              "mount --bind \"$1\" /run && exec \"$2\" check >/dev/null 2>&1", "sh", scratch, criu.path])
        guard let data = FileManager.default.contents(atPath: scratch + "/criu.kdat"), !data.isEmpty else {
            return "CRIU wrote no kernel-feature cache"
        }
        let temporary = path + ".godwit.tmp"
        guard FileManager.default.createFile(atPath: temporary, contents: data, attributes: [.posixPermissions: 0o600]),
              rename(temporary, path) == 0 else { return "cannot write \(path)" }
        return "CRIU's kernel-feature cache written to \(path)"
    }
}
