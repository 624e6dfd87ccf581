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

    /// Where lazy-pages gets its pages: a page server it connects to (plain CRIU, the
    /// benchmark's baseline), or a connection made for it and inherited as
    /// `CRIUProcess.pageServerFD` (Godwit's proxy, which then never listens).
    public enum PageSource: Sendable, Equatable {
        case address(PageServerAddress)
        case inheritedSocket
    }

    /// `statusFD`: CRIU writes a byte there once restore may connect (see `waitUntilReady`).
    public static func arguments(from source: PageSource, directory: String, log: CRIULogFile? = nil,
                                 statusFD: Int32? = nil) -> [String] {
        var args = ["lazy-pages", "--page-server"]
        switch source {
        case .address(let address): args += ["--address", address.address, "--port", String(address.port)]
        case .inheritedSocket: args += ["--ps-socket", String(CRIUProcess.pageServerFD)]
        }
        args += ["-D", directory] + (log ?? CRIULogFile.named("lazy-pages.log", directory: directory)).arguments
        if let statusFD { args += ["--status-fd", String(statusFD)] }
        return args
    }

    /// Starts the daemon against a page server at `address` (no launcher: it talks to
    /// restore over a Unix socket path, which works across network namespaces).
    public convenience init(criu: CRIU, address: PageServerAddress, directory: String) throws {
        try self.init(criu: criu, source: .address(address), socket: nil, directory: directory)
    }

    /// Starts the daemon on a connection made for it (`pageServerSocket` is its end; the
    /// caller closes its copy afterwards).
    public convenience init(criu: CRIU, pageServerSocket: Int32, directory: String) throws {
        try self.init(criu: criu, source: .inheritedSocket, socket: pageServerSocket, directory: directory)
    }

    private init(criu: CRIU, source: PageSource, socket: Int32?, directory: String) throws {
        self.directory = directory
        let log = CRIULogFile.named("lazy-pages.log", directory: directory)
        logPath = log.path
        socketPath = directory + "/lazy-pages.socket"
        try? FileManager.default.removeItem(atPath: socketPath)
        process = try criu.start(Self.arguments(from: source, directory: directory, log: log, statusFD: CRIUProcess.statusFD),
                                 pageServerSocket: socket)
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
