import Foundation
import GodwitCore

/// A running `criu dump --lazy-pages`: it writes every image except the lazy memory, then
/// keeps the container's tasks frozen while its page server hands out pages, until a
/// client sends CLOSE (dump completes, tasks are killed) or drops the connection (dump
/// fails, CRIU resumes the tasks). Runs in the background; `criu dump` itself blocks.
public final class LazyDump {
    public let options: DumpOptions
    public let address: PageServerAddress
    public let logPath: String
    private let process: Process
    public let startedAt = Date()

    /// The line CRIU logs once the images are written and the page server listens.
    public static let servingMarker = "Starting lazy pages server"

    public init(criu: CRIU, options: DumpOptions) throws {
        guard let address = options.lazyPages else { preconditionFailure("LazyDump needs options.lazyPages") }
        self.options = options
        self.address = address
        try FileManager.default.createDirectory(atPath: options.imagesDirectory, withIntermediateDirectories: true)
        logPath = options.imagesDirectory + "/dump.log"
        try? FileManager.default.removeItem(atPath: logPath)
        process = try criu.spawn(criu.dumpArguments(options))
    }

    public var isRunning: Bool { process.isRunning }
    public var exitStatus: Int32? { process.isRunning ? nil : process.terminationStatus }

    private var log: String { (HostEnvironment.readBytes(logPath).map { String(decoding: $0, as: UTF8.self) }) ?? "" }

    /// True once CRIU's page server socket listens. CRIU opens it only after every image
    /// is written. Read from the CRIU process's own view of the network (its namespace),
    /// because the log line only appears at -v3 and above.
    public var isListening: Bool {
        let hexPort = String(format: "%04X", address.port)
        for table in ["tcp", "tcp6"] {
            let text = HostEnvironment.read("/proc/\(process.processIdentifier)/net/\(table)") ?? ""
            for line in text.split(separator: "\n").dropFirst() {
                let fields = line.split(separator: " ")
                // sl local_address rem_address st ...; st 0A = LISTEN
                if fields.count > 3, fields[1].hasSuffix(":" + hexPort), fields[3] == "0A" { return true }
            }
        }
        return false
    }

    /// Waits until the page server listens (images complete). Throws with CRIU's first
    /// error if the dump ends instead.
    public func waitUntilServing(timeout: TimeInterval = 60) throws {
        let ok = poll(timeout: timeout) { !process.isRunning || isListening || log.contains(Self.servingMarker) }
        if process.isRunning && ok { return }
        if process.isRunning {
            throw GodwitError("CRIU lazy dump did not start its page server within \(Int(timeout)) s",
                              hint: "the full log is \(logPath)", context: [("phase", "dump")])
        }
        let line = CRIULog.firstError(path: logPath) ?? "exit \(process.terminationStatus)"
        throw GodwitError("CRIU lazy dump failed: \(line)", hint: "the full log is \(logPath)", context: [("phase", "dump")])
    }

    /// Waits for `criu dump` to exit; its status, or nil on timeout.
    @discardableResult
    public func waitForExit(timeout: TimeInterval = 30) -> Int32? {
        guard poll(timeout: timeout, { !process.isRunning }) else { return nil }
        return process.terminationStatus
    }

    /// Last resort for cleanup: SIGKILL the CRIU process (the kernel detaches its ptrace
    /// stops; the caller thaws the cgroup). Only used once its page server is serving,
    /// when no parasite code is left inside the tasks.
    public func kill() {
        if process.isRunning { Glibc.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    public var stats: CRIUStats? { try? CRIUStats.read(directory: options.imagesDirectory) }
}
