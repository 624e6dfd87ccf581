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
public final class LazyPagesDaemon: Sendable {
    public let directory: String
    public let logPath: String
    public let socketPath: String
    private let process: CRIUProcess

    /// `statusFD`: CRIU writes a byte there once restore may connect (see `waitUntilReady`).
    public static func arguments(address: PageServerAddress, directory: String, logFile: String = "lazy-pages.log",
                                 statusFD: Int32? = nil) -> [String] {
        var args = ["lazy-pages", "--page-server", "--address", address.address, "--port", String(address.port),
                    "-D", directory, "-o", logFile]
        if let statusFD { args += ["--status-fd", String(statusFD)] }
        return args
    }

    /// Starts the daemon (no launcher: it talks to the proxy over the host's loopback and
    /// to restore over a Unix socket path, which works across network namespaces).
    public init(criu: CRIU, address: PageServerAddress, directory: String) throws {
        self.directory = directory
        logPath = directory + "/lazy-pages.log"
        socketPath = directory + "/lazy-pages.socket"
        try? FileManager.default.removeItem(atPath: socketPath)
        process = try criu.start(Self.arguments(address: address, directory: directory, statusFD: CRIUProcess.statusFD))
    }

    public var pid: Int32 { process.pid }
    public var isRunning: Bool { process.isRunning }

    /// Waits until the daemon may be handed the tasks by `criu restore --lazy-pages`: CRIU
    /// signals its status fd once lazy-pages.socket listens (cr_lazy_pages in criu/uffd.c:
    /// prepare_lazy_socket, then status_ready), which the socket file's mere existence
    /// (it appears at bind, before listen) did not tell.
    public func waitUntilReady(timeout: TimeInterval = 30) throws {
        let outcome = process.waitUntilReady(timeout: timeout)
        if outcome == .ready && process.isRunning { return }
        if outcome != .timedOut { _ = process.waitForExit(timeout: 5) }
        let line = CRIULog.firstError(path: logPath)
            ?? (outcome == .timedOut ? "not ready after \(Int(timeout)) s" : "exit \(process.exitStatus.map { String($0) } ?? "unknown")")
        throw GodwitError("criu lazy-pages did not start: \(line)", hint: "the full log is \(logPath)",
                          context: [("phase", "lazy-pages")])
    }

    @discardableResult
    public func waitForExit(timeout: TimeInterval) -> Int32? {
        process.waitForExit(timeout: timeout)
    }

    public func kill() { process.kill() }
}
