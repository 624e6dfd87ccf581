import CGodwit
import Foundation
import GodwitCore

/// CRIU's network lock: while it dumps (and until restore finishes) it drops the
/// container's traffic with an nftables table of its own, `inet CRIU-<run id>` in the
/// container's network namespace (criu/netfilter.c, nftables_get_table). These hosts have
/// no iptables binaries, hence `--network-lock nftables` on dump and restore.
public enum CRIUNetworkLock {
    /// The value of CRIU's `--network-lock` flag.
    static let backend = "nftables"

    /// What a failed lazy dump leaves behind, undone. CRIU 4.2.1's `cr_dump_finish`
    /// (criu/cr-dump.c) calls `network_unlock()` (take every TCP socket out of repair mode,
    /// remove its nftables table) only if the dump itself failed or the tasks are to stay
    /// alive; then it runs the lazy page server. When that phase fails (the destination's
    /// restore failed, its daemon died while fetching), the tasks resume with both still in
    /// place: every packet dropped, and the established connections left in TCP_REPAIR,
    /// where they never answer again. Only tables CRIU names CRIU-* are touched; best
    /// effort: a namespace or task that is gone leaves nothing to do.
    public static func removeLeftover(initPID: pid_t, tasks: [pid_t]) {
        // Godwit's own filter from before the dump, in this namespace: the container must
        // take new connections again as soon as it runs.
        ListenQueueDrain.removeLeftover(initPID: initPID)
        let netns = ["nsenter", "--net=/proc/\(initPID)/ns/net"]
        if let list = try? Command.run(netns + ["nft", "list", "tables"]), list.succeeded {
            for table in leftoverTables(inListing: list.stdout) {
                _ = try? Command.run(netns + ["nft", "delete", "table", table.family, table.name])
            }
        }
        // After the table: leaving repair mode sends a window probe, which must get out.
        _ = releaseRepairedSockets(tasks: tasks)
    }

    /// Takes every TCP socket of `tasks` that is in repair mode out of it, as CRIU's
    /// `tcp_unlock_one` would: the socket is borrowed with pidfd_getfd (the option belongs
    /// to the socket, not the descriptor), and TCP_REPAIR_OFF also sends a window probe,
    /// so the peer's backed-off retransmission resumes at once. Returns how many it released.
    ///
    /// Not restored: the socket's SO_REUSEADDR, which leaving repair mode clears (CRIU puts
    /// back the value it saved). Only established sockets are ever repaired, and a
    /// connected socket never binds again, so the option no longer matters for them.
    @discardableResult
    public static func releaseRepairedSockets(tasks: [pid_t]) -> Int {
        var released = 0
        var seen = Set<String>()
        for pid in tasks {
            let fdDirectory = "/proc/\(pid)/fd"
            guard let fds = try? FileManager.default.contentsOfDirectory(atPath: fdDirectory) else { continue }
            let pidfd = cgw_pidfd_open(pid)
            guard pidfd >= 0 else { continue }
            defer { close(pidfd) }
            for name in fds {
                guard let target = Int32(name),
                      let link = try? FileManager.default.destinationOfSymbolicLink(atPath: fdDirectory + "/" + name),
                      link.hasPrefix("socket:["), seen.insert(link).inserted else { continue }
                let fd = cgw_pidfd_getfd(pidfd, target)
                guard fd >= 0 else { continue }
                defer { close(fd) }
                if inRepair(fd) {
                    var off: Int32 = tcpRepairOff
                    if setsockopt(fd, solTCP, tcpRepair, &off, socklen_t(MemoryLayout<Int32>.size)) == 0 { released += 1 }
                }
            }
        }
        return released
    }

    /// linux/tcp.h (not in Swift's Glibc module).
    static let solTCP: Int32 = 6, tcpRepair: Int32 = 19, tcpRepairQueue: Int32 = 20, tcpRepairOff: Int32 = 0

    /// A TCP socket in repair mode: only then does the kernel answer TCP_REPAIR_QUEUE
    /// (do_tcp_getsockopt: EINVAL otherwise; other sockets refuse the TCP level).
    static func inRepair(_ fd: Int32) -> Bool {
        var queue: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        return getsockopt(fd, solTCP, tcpRepairQueue, &queue, &length) == 0
    }

    /// CRIU's tables in the output of `nft list tables` ("table inet CRIU-1234" lines).
    static func leftoverTables(inListing listing: String) -> [(family: String, name: String)] {
        listing.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            guard words.count == 3, words[0] == "table", words[2].hasPrefix("CRIU-") else { return nil }
            return (String(words[1]), String(words[2]))
        }
    }
}
