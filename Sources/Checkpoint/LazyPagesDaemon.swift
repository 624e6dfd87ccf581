import Foundation
import GodwitCore

/// The destination's `criu lazy-pages --page-server --address A --port P -D DIR`: it takes
/// the restored tasks' userfaultfds from `criu restore --lazy-pages` (through
/// DIR/lazy-pages.socket), resolves their faults with pages fetched from A:P (a Godwit
/// page proxy, not the source itself), sweeps the rest in the background, sends CLOSE
/// when every page is in place and exits.
///
/// Killing it while tasks still miss pages makes the kernel drop the uffd registrations,
/// after which the missing pages read as ZEROS: kill the restored tasks first.
public final class LazyPagesDaemon {
    public let directory: String
    public let logPath: String
    public let socketPath: String
    private let process: Process

    public static func arguments(address: PageServerAddress, directory: String, logFile: String = "lazy-pages.log") -> [String] {
        ["lazy-pages", "--page-server", "--address", address.address, "--port", String(address.port),
         "-D", directory, "-o", logFile]
    }

    /// Starts the daemon (no launcher: it talks to the proxy over the host's loopback and
    /// to restore over a Unix socket path, which works across network namespaces).
    public init(criu: CRIU, address: PageServerAddress, directory: String) throws {
        self.directory = directory
        logPath = directory + "/lazy-pages.log"
        socketPath = directory + "/lazy-pages.socket"
        try? FileManager.default.removeItem(atPath: socketPath)
        process = try criu.spawn(Self.arguments(address: address, directory: directory))
    }

    public var pid: Int32 { process.processIdentifier }
    public var isRunning: Bool { process.isRunning }

    /// Waits for the daemon's socket (it is ready for `criu restore --lazy-pages`).
    public func waitUntilReady(timeout: TimeInterval = 30) throws {
        let ok = poll(timeout: timeout) { !process.isRunning || FileManager.default.fileExists(atPath: socketPath) }
        guard ok, process.isRunning else {
            let line = CRIULog.firstError(path: logPath) ?? (process.isRunning ? "no socket after \(Int(timeout)) s" : "exit \(process.terminationStatus)")
            throw GodwitError("criu lazy-pages did not start: \(line)", hint: "the full log is \(logPath)",
                              context: [("phase", "lazy-pages")])
        }
    }

    @discardableResult
    public func waitForExit(timeout: TimeInterval) -> Int32? {
        guard poll(timeout: timeout, { !process.isRunning }) else { return nil }
        return process.terminationStatus
    }

    public func kill() {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }
}
