import Foundation
import Synchronization
import GodwitCore

/// Network-visible downtime: a client that sends a UDP datagram every `interval` to a
/// responder (workloads/udpecho.c in the container) and records the longest time between
/// two answers. Runs in the lab's client namespace as `godwit bench _udp-probe`; stops when
/// its stdin (a lifeline) closes or on SIGTERM, and prints one JSON line.
public struct UDPProbeResult: Codable, Sendable, Equatable {
    public var sent: Int
    public var answered: Int
    /// Longest time without an answer, from the first answer on (ms).
    public var longestGapMillis: Double
    /// When that gap ended (Unix time, ms); nil when it had not ended at stop.
    public var longestGapEndedAtMillis: Double?
    /// The responder had not answered again by the time the probe stopped: the gap is a
    /// lower bound.
    public var unansweredAtEnd: Bool
    public var durationMillis: Double
}

public enum UDPProbe {
    /// Hidden CLI subcommand the probe runs as (BenchMigrate defines it).
    public static let arguments = ["bench", "_udp-probe"]
    public static let readyLine = "answering"
    /// Printed (with the gap in ms) when answers come back after a gap of at least 20 ms.
    public static let resumedLine = "resumed"
    public static let reportedGapMillis = 20.0

    static func nowMillis() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Double(ts.tv_sec) * 1000 + Double(ts.tv_nsec) / 1e6
    }

    /// The probe's loop. `lifeline`: a descriptor whose EOF ends it.
    public static func run(address: String, port: UInt16, intervalMicros: Int, maxSeconds: Double,
                           lifeline: Int32?, onFirstAnswer: () -> Void,
                           onResumed: (Double) -> Void = { _ in }) throws -> UDPProbeResult {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw GodwitError.errno("socket") }
        defer { close(fd) }
        var peer = sockaddr_in()
        peer.sin_family = sa_family_t(AF_INET)
        peer.sin_port = port.bigEndian
        guard inet_pton(AF_INET, address, &peer.sin_addr) == 1 else { throw GodwitError("invalid IPv4 address '\(address)'") }
        let connected = withUnsafePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { throw GodwitError.errno("connect to \(address):\(port)") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)

        let start = nowMillis()
        let interval = Double(intervalMicros) / 1000
        var nextSend = start
        var sequence: UInt64 = 0
        var sent = 0, answered = 0
        var lastAnswer: Double?
        var longest = 0.0
        var longestEnded: Double?
        var buffer = [UInt8](repeating: 0, count: 64)
        var lifelineOpen = lifeline != nil
        while true {
            let now = nowMillis()
            if now - start > maxSeconds * 1000 { break }
            if now >= nextSend {
                var packet = sequence.littleEndian
                _ = send(fd, &packet, 8, 0)  // ECONNREFUSED while the responder is gone: keep going
                sequence += 1; sent += 1
                nextSend += interval
                if nextSend < now { nextSend = now + interval }  // a stalled probe does not burst
            }
            var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            if lifelineOpen, let lifeline { fds.append(pollfd(fd: lifeline, events: Int16(POLLIN), revents: 0)) }
            let wait = max(0, Int32((nextSend - nowMillis()).rounded(.up)))
            _ = poll(&fds, nfds_t(fds.count), wait)
            if fds.count > 1, fds[1].revents != 0 {
                var byte: UInt8 = 0
                if read(fds[1].fd, &byte, 1) <= 0 { lifelineOpen = false; break }
            }
            while true {
                let n = recv(fd, &buffer, buffer.count, 0)
                if n < 0 { break }  // EAGAIN, or ECONNREFUSED from an ICMP error
                let at = nowMillis()
                answered += 1
                if let last = lastAnswer {
                    if at - last > longest { longest = at - last; longestEnded = at }
                    if at - last >= UDPProbe.reportedGapMillis { onResumed(at - last) }
                } else {
                    onFirstAnswer()
                }
                lastAnswer = at
            }
            if probeStopRequested.load(ordering: .relaxed) { break }
        }
        let end = nowMillis()
        var unanswered = false
        if let last = lastAnswer, end - last > max(longest, 50) {
            longest = end - last; longestEnded = nil; unanswered = true
        } else if lastAnswer == nil {
            longest = end - start; longestEnded = nil; unanswered = true
        }
        return UDPProbeResult(sent: sent, answered: answered, longestGapMillis: longest, longestGapEndedAtMillis: longestEnded,
                              unansweredAtEnd: unanswered, durationMillis: end - start)
    }

    /// SIGTERM handler target (the handler only sets it; an atomic store is
    /// async-signal-safe).
    public static let probeStopRequested = Atomic<Bool>(false)
}

/// The probe as a child process of the bench: started in the client's namespace, asked to
/// stop by closing its stdin.
public final class UDPProbeProcess {
    private let process = Process()
    private let output = Pipe(), errors = Pipe(), lifeline = Pipe()
    /// What the probe printed so far: appended by the reader thread, read by the bench.
    private let text = TextBuffer()

    public init(lab: Lab, executable: String, address: String, port: UInt16, intervalMicros: Int = 1000, maxSeconds: Double = 900) throws {
        let argv = LabNamespace.enter(lab.client.netns) + [executable] + UDPProbe.arguments
            + ["--address", address, "--port", String(port), "--interval-us", String(intervalMicros), "--max-seconds", String(maxSeconds)]
        process.executableURL = URL(fileURLWithPath: try Command.resolve(argv[0]))
        process.arguments = Array(argv.dropFirst())
        process.standardInput = lifeline
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        let handle = output.fileHandleForReading
        let text = self.text
        Thread {
            while true {
                let data = handle.availableData
                if data.isEmpty { return }
                text.append(String(decoding: data, as: UTF8.self))
            }
        }.start()
    }

    private var stdout: String { text.value }
    /// Everything the probe printed (its "resumed" lines with times, then its result).
    public var transcript: String { text.value }

    /// How many gaps of at least 20 ms have ended so far.
    public var resumedCount: Int {
        stdout.split(separator: "\n").filter { $0.hasPrefix(UDPProbe.resumedLine) }.count
    }

    /// Waits until a gap ends after `count` had (answers came back after the move).
    @discardableResult
    public func waitForResume(after count: Int, timeout: TimeInterval) -> Bool {
        poll(timeout: timeout) { resumedCount > count || !process.isRunning }
    }

    /// True once the responder answered the first datagram.
    public func waitUntilAnswering(timeout: TimeInterval) -> Bool {
        poll(timeout: timeout) { stdout.contains(UDPProbe.readyLine) || !process.isRunning } && process.isRunning
    }

    /// Closes the lifeline and returns the probe's result.
    public func stop() throws -> UDPProbeResult {
        try? lifeline.fileHandleForWriting.close()
        if !poll(timeout: 5, { !process.isRunning }) {
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        _ = poll(timeout: 2) { stdout.contains("}") }
        let line = stdout.split(separator: "\n").last { $0.hasPrefix("{") }
        guard let line, let result = try? JSONDecoder().decode(UDPProbeResult.self, from: Data(line.utf8)) else {
            let err = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            throw GodwitError("the network probe gave no result: \(err.split(separator: "\n").last ?? "exit \(process.terminationStatus)")")
        }
        return result
    }
}

/// Text that one thread appends to and others read.
final class TextBuffer: Sendable {
    private let text = Mutex("")
    func append(_ chunk: String) { text.withLock { $0 += chunk } }
    var value: String { text.withLock { $0 } }
}
