import Foundation
import GodwitCore

/// CRIU locks the container's network with an nftables table (`--network-lock nftables`,
/// set in CRIU.dumpArguments) and should remove it when a dump fails. After a failed
/// restore on the destination (the whole memory already served), CRIU 4.2.1 was seen to
/// resume the container with the table still there: every packet dropped. New connections
/// work again once it is gone. Only tables CRIU names CRIU-* are touched.
public enum CRIUNetworkLock {
    public static func removeLeftover(initPID: pid_t) {
        let netns = ["nsenter", "--net=/proc/\(initPID)/ns/net"]
        guard let list = try? Command.run(netns + ["nft", "list", "tables"]), list.succeeded else { return }
        for line in list.stdout.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count == 3, words[0] == "table", words[2].hasPrefix("CRIU-") else { continue }
            _ = try? Command.run(netns + ["nft", "delete", "table", String(words[1]), String(words[2])])
        }
    }
}
