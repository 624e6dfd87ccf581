import Foundation
import GodwitCore

/// CRIU's network lock: while it dumps (and until restore finishes) it drops the
/// container's traffic with an nftables table of its own, `inet CRIU-<run id>` in the
/// container's network namespace (criu/netfilter.c, nftables_get_table). These hosts have
/// no iptables binaries, hence `--network-lock nftables` on dump and restore.
public enum CRIUNetworkLock {
    /// The value of CRIU's `--network-lock` flag.
    static let backend = "nftables"

    /// CRIU should remove its table when a dump fails. After a failed restore on the
    /// destination (the whole memory already served), CRIU 4.2.1 was seen to resume the
    /// container with the table still there: every packet dropped. New connections work
    /// again once it is gone; connections established at the freeze did not come back in
    /// that case (see docs/migration.md). Only tables CRIU names CRIU-* are touched.
    /// Best effort: a namespace that is gone or an nft that fails leaves nothing to do.
    public static func removeLeftover(initPID: pid_t) {
        // Godwit's own filter from before the dump, in this namespace: the container must
        // take new connections again as soon as it runs.
        ListenQueueDrain.removeLeftover(initPID: initPID)
        let netns = ["nsenter", "--net=/proc/\(initPID)/ns/net"]
        guard let list = try? Command.run(netns + ["nft", "list", "tables"]), list.succeeded else { return }
        for table in leftoverTables(inListing: list.stdout) {
            _ = try? Command.run(netns + ["nft", "delete", "table", table.family, table.name])
        }
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
