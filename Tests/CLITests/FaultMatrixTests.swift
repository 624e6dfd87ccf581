import Foundation
import GodwitCore
import Testing

/// A representative subset of `godwit bench faults` (the full matrix is `make faults`):
/// one cell per kind of trouble a move meets, each with a real lab, real daemons and CRIU.
/// Every cell must end with exactly one running copy whose memory verifies, the failure
/// naming its phase.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct FaultMatrixTests {
    static let cells = [
        "image-transfer:dst-kill",   // the destination daemon dies mid-transfer: rolled back
        "checkpoint:src-kill",       // the source daemon dies while frozen: thawed at restart
        "restore:link-down",         // the link goes while the destination restores
        "restore:dst-criu",          // the destination's CRIU fails the restore
        "commit:client-kill",        // the client dies past the point of no return: moved
    ]

    @Test func aRepresentativeSubsetOfTheMatrixKeepsExactlyOneCopy() throws {
        let godwit = Built.path("godwit")
        try #require(FileManager.default.isExecutableFile(atPath: godwit), "build godwit first: \(godwit)")
        try #require(FileManager.default.isExecutableFile(atPath: Built.path("memtouch")),
                     "build the workloads first: bash scripts/build-workloads.sh .build/debug")
        let root = NSTemporaryDirectory() + "godwit-faults-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: root) }
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_LAB_ROOT"] = root + "/labs"
        let result = try Command.run([godwit, "bench", "faults", "--cells", Self.cells.joined(separator: ","),
                                      "--size", "32", "--output", root + "/results"], environment: environment)
        #expect(result.succeeded, "bench faults failed: \(result.stderr)")
        let csv = try String(contentsOfFile: root + "/results/faults.csv", encoding: .utf8)
        let rows = csv.split(separator: "\n").dropFirst().map { $0.split(separator: ",", omittingEmptySubsequences: false).map(String.init) }
        #expect(rows.count == Self.cells.count, "\(csv)")
        for row in rows where row.count >= 12 {
            // phase,fault,mode,injected,outcome,running_on,survived,lost,memory,move_failed,reported_phase,verdict,...
            #expect(row[3] == "yes", "\(row[0]) × \(row[1]) was not injected: \(row.joined(separator: ","))")
            #expect(row[11] == "ok", "\(row[0]) × \(row[1]): \(row.joined(separator: ","))")
            #expect(row[5].split(separator: "+").count == 1, "\(row[0]) × \(row[1]) runs on \(row[5])")
            #expect(row[8] == "pass", "\(row[0]) × \(row[1]): memory \(row[8])")
        }
        // The run left nothing: no namespaces of its lab ("... in lab NAME,"), no mounts.
        let mounts = HostEnvironment.read("/proc/self/mountinfo") ?? ""
        #expect(!mounts.contains(root), "mounts left under \(root)")
        let lab = try #require(result.stderr.components(separatedBy: " in lab ").dropFirst().first?.split(separator: ",").first)
        let namespaces = try Command.run(["ip", "netns", "list"]).stdout
        #expect(!namespaces.contains("godwit-\(lab)-"), "lab \(lab) is left: \(namespaces)")
    }
}
