import Foundation
import GodwitCore
import Synchronization

/// Where one CRIU run writes its log. Normally `NAME` in the images directory at CRIU's
/// default level (warnings and errors), read back for the error line a failure carries.
///
/// With `GODWIT_CRIU_LOG_DIR` set in the daemon's environment (the benchmark sets it for
/// its lab daemons), every run logs at `-v4` instead: debug lines, each with CRIU's own
/// timestamp, the only account of where CRIU spends the frozen time. They go to that
/// folder under a name no other run uses, so they outlive the images directory (a moved
/// container's is removed). Not the default: at -v4 CRIU writes a line per VMA and page
/// pipe, which costs time inside the freeze.
public struct CRIULogFile: Sendable, Equatable {
    public static let directoryVariable = "GODWIT_CRIU_LOG_DIR"
    /// What CRIU is told (`-o PATH`, and `-v4` when keeping).
    public let arguments: [String]
    /// Where the log is read back.
    public let path: String

    private static let counter = Atomic<Int>(0)

    public static func named(_ name: String, directory: String,
                             environment: [String: String] = ProcessInfo.processInfo.environment) -> CRIULogFile {
        guard let keep = environment[directoryVariable], keep.hasPrefix("/") else {
            return CRIULogFile(arguments: ["-o", name], path: directory + "/" + name)
        }
        try? FileManager.default.createDirectory(atPath: keep, withIntermediateDirectories: true)
        let n = counter.add(1, ordering: .relaxed).newValue
        let stamp = Int64(Date().timeIntervalSince1970 * 1000)
        let path = "\(keep)/\(stamp)-\(getpid())-\(n)-\(name)"
        return CRIULogFile(arguments: ["-o", path, "-v4"], path: path)
    }
}
