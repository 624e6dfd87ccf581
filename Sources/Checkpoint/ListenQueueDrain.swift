import Foundation
import GodwitCore
import Synchronization

/// Empties a container's accept queues before CRIU freezes it.
///
/// CRIU cannot dump a connection its server has not accepted yet; with `--skip-in-flight` it
/// leaves it out (criu/sk-inet.c), and the restored listener starts with an empty queue. The
/// client of such a connection has finished its handshake and sent its request, which the
/// source's kernel acknowledged: nothing is left for it to retransmit, so it waits for an
/// answer that never comes (measured: curl sat out its whole 30 s timeout). A handshake half
/// done at the freeze ends the same way. Only a client whose SYN got no answer recovers: its
/// kernel sends the SYN again (after 1 s, then 3 s, 7 s...) and reaches the restored server.
///
/// Most such connections are born during the freeze itself: CRIU freezes the tasks first and
/// takes its network lock after that (criu/cr-dump.c, cr_dump_tasks: collect_pstree, then
/// network_lock), and meanwhile the kernel completes handshakes for a server that can no
/// longer accept. So before CRIU starts, new connection attempts (SYN without ACK) are
/// dropped on their way into the container, the server accepts what it already queued, and
/// CRIU freezes a container with empty queues; its network lock then takes over. Established
/// connections pass. Measured under 16 clients fetching a page over new connections, eight
/// moves: 16 requests hung without this, none with it; it costs 15–25 ms before CRIU starts.
///
/// The filter is an nftables netdev-egress chain on the host end of the container's veth,
/// outside the container's network namespace: CRIU dumps that namespace's ruleset, and a
/// filter there would travel to the destination. Its one set element expires by itself, so
/// a daemon that dies mid-dump can't leave a container that refuses every new connection.
public final class ListenQueueDrain: Sendable {
    /// Host ends of the container's veths (in this process's network namespace).
    public let interfaces: [String]
    /// Set by the first `end()`: a later one must not remove the filter of a newer drain of
    /// a container with the same name (same veth, same table).
    private let ended = Mutex(false)

    init(interfaces: [String]) { self.interfaces = interfaces }

    /// Longer than any freeze needs (CRIU's lock replaces the filter once the tasks are
    /// frozen), short enough to heal by itself after a crash.
    static let expirySeconds = 30

    /// Drops new connection attempts into the container whose init is `pid`, then waits up
    /// to `timeout` until no listener holds a connection not yet accepted and no handshake is
    /// half done. A server that doesn't accept within `timeout` keeps what it queued: CRIU
    /// then skips those. nil, having changed nothing, when the container has no veth whose
    /// host end is in this network namespace or nftables can't filter there (netdev egress
    /// needs Linux 5.16).
    public static func begin(pid: pid_t, timeout: TimeInterval) -> ListenQueueDrain? {
        let interfaces = hostEnds(pid: pid)
        guard !interfaces.isEmpty else { return nil }
        let script = interfaces.map { rules(table: table($0), interface: $0) }.joined()
        guard (try? Command.run(["nft", "-f", "-"], input: script))?.succeeded == true else { return nil }
        let drain = ListenQueueDrain(interfaces: interfaces)
        let deadline = Date().addingTimeInterval(timeout)
        while let pending = pendingConnections(pid: pid), pending > 0, Date() < deadline {
            usleep(2_000)
        }
        return drain
    }

    /// Lets connection attempts in again. Only the first call acts.
    public func end() {
        guard !ended.withLock({ done in defer { done = true }; return done }) else { return }
        for interface in interfaces {
            _ = try? Command.run(["nft", "delete", "table", "netdev", Self.table(interface)])
        }
    }

    /// After a failed dump: whatever filter is left for this container goes.
    public static func removeLeftover(initPID: pid_t) {
        ListenQueueDrain(interfaces: hostEnds(pid: initPID)).end()
    }

    static func table(_ interface: String) -> String { "godwit-drain-" + interface }

    /// One transaction: `add` then `delete` removes a table left by an earlier drain of a
    /// container of the same name, which `nft` would otherwise merge into.
    static func rules(table: String, interface: String) -> String {
        """
        add table netdev \(table)
        delete table netdev \(table)
        table netdev \(table) {
            set active { type ifname; flags timeout; elements = { "\(interface)" timeout \(expirySeconds)s } }
            chain syn {
                type filter hook egress device "\(interface)" priority 0; policy accept;
                oifname @active tcp flags & (syn | ack) == syn drop
            }
        }

        """
    }

    // MARK: finding the container's veths and queues

    static func hostEnds(pid: pid_t) -> [String] {
        let inside = try? Command.run(["nsenter", "--net=/proc/\(pid)/ns/net", "ip", "-o", "link", "show"])
        let here = try? Command.run(["ip", "-o", "link", "show"])
        guard let inside, inside.succeeded, let here, here.succeeded else { return [] }
        return hostEnds(containerLinks: inside.stdout, hostLinks: here.stdout)
    }

    /// From two `ip -o link show` listings: the host-side interfaces that are the peers of
    /// the container's. A veth whose peer lives in another namespace reads "3: eth0@if7:"
    /// (index, name, the peer's index over there); both ends must name each other.
    static func hostEnds(containerLinks: String, hostLinks: String) -> [String] {
        let container = LinkListing.parse(containerLinks)
        return LinkListing.parse(hostLinks).filter { host in
            container.contains { $0.peer != nil && $0.peer == host.index && host.peer == $0.index }
        }.map(\.name)
    }

    /// `ss` asks the kernel for listeners and half-open connections only: reading
    /// /proc/PID/net/tcp would walk every TIME_WAIT socket a busy server has.
    static func pendingConnections(pid: pid_t) -> Int? {
        guard let result = try? Command.run(["nsenter", "--net=/proc/\(pid)/ns/net", "ss", "-H", "-t", "-a", "-n",
                                             "state", "listening", "state", "syn-recv"]),
              result.succeeded else { return nil }
        return pendingConnections(ss: result.stdout)
    }

    /// Connections waiting in accept queues (a listener's Recv-Q) plus handshakes half done.
    static func pendingConnections(ss output: String) -> Int {
        output.split(separator: "\n").reduce(0) { sum, line in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2 else { return sum }
            switch fields[0] {
            case "LISTEN": return sum + (Int(fields[1]) ?? 0)
            case "SYN-RECV": return sum + 1
            default: return sum
            }
        }
    }
}

/// `ip -o link show`, read: one line per link, "3: eth0@if7: <...>" (index, name, and for a
/// veth whose peer lives in another namespace, the peer's index over there).
public enum LinkListing {
    public static func parse(_ listing: String) -> [(index: Int, name: String, peer: Int?)] {
        listing.split(separator: "\n").compactMap { line in
            let fields = line.split(separator: ":", maxSplits: 2)
            guard fields.count == 3, let index = Int(fields[0]) else { return nil }
            let parts = fields[1].trimmingCharacters(in: .whitespaces).split(separator: "@")
            guard let name = parts.first.map(String.init), !name.isEmpty else { return nil }
            let peer = parts.count == 2 && parts[1].hasPrefix("if") ? Int(parts[1].dropFirst(2)) : nil
            return (index, name, peer)
        }
    }
}
