import Foundation
import GodwitCore

/// A long-lived busybox `nc` client in a network namespace, fed through a pipe: one TCP
/// connection whose survival the tests check (it exits as soon as the connection breaks).
final class NetcatClient {
    private(set) var process = Process()
    private(set) var input = Pipe()

    /// Connects to ip:port from the namespace at `netnsPath`. nc exits at once when refused
    /// (the server not listening yet): then it tries again, up to `attempts` times.
    init(netnsPath: String, ip: String, port: Int, attempts: Int = 20) throws {
        var connected = false
        for _ in 0..<attempts where !connected {
            process = Process()
            input = Pipe()
            process.executableURL = URL(fileURLWithPath: try Command.resolve("nsenter"))
            process.arguments = ["--net=" + netnsPath, try Command.resolve("busybox"), "nc", ip, String(port)]
            process.standardInput = input
            process.standardOutput = FileHandle.nullDevice
            process.standardError = FileHandle.nullDevice
            try process.run()
            usleep(300_000)
            connected = process.isRunning
            if !connected { process.waitUntilExit() }
        }
        guard connected else { throw GodwitError("the client could not connect to \(ip):\(port)") }
    }

    var isConnected: Bool { process.isRunning }

    func send(_ line: String) throws {
        try input.fileHandleForWriting.write(contentsOf: Data((line + "\n").utf8))
    }

    func stop() {
        try? input.fileHandleForWriting.close()
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }
}
