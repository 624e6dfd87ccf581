import Foundation
import GodwitCore

/// Result of `lab link-test`: TCP throughput from one lab endpoint to another.
public struct LinkTestResult: Codable, Sendable {
    public var lab: LabName
    public var from: String
    public var to: String
    public var bytes: UInt64
    public var seconds: Double
    public var megabitsPerSecond: Double
    /// The shaping in force on each end at the time ("unlimited" or e.g. "1gbit").
    public var fromRate: String
    public var toRate: String

    public var humanDescription: String {
        String(format: "%@ -> %@: %.1f Mbit/s (%.1f MB in %.2f s; rates %@ / %@)",
               from, to, megabitsPerSecond, Double(bytes) / 1e6, seconds, fromRate, toRate)
    }
}

/// Measures lab links by running a TCPProbe sink in the destination's namespace and a
/// source in the origin's, each as `nsenter --net=... godwit lab _tcp-sink|_tcp-source`:
/// no fork of this (multi-threaded) process, and each probe lives in exactly one namespace.
public enum LinkTest {
    /// Hidden CLI subcommands the probes run as; LabCommand defines them with these flags.
    public static let sinkArguments = ["lab", "_tcp-sink"]
    public static let sourceArguments = ["lab", "_tcp-source"]

    /// `executable` is a godwit binary (the CLI passes itself).
    public static func run(lab: Lab, from: String, to: String, seconds: Double = 3,
                           executable: String) throws -> LinkTestResult {
        guard seconds > 0, seconds <= 600 else {
            throw GodwitError("invalid duration \(seconds) s", hint: "use --seconds greater than 0 and at most 600")
        }
        let origin = try lab.endpoint(named: from), destination = try lab.endpoint(named: to)
        guard origin != destination else {
            throw GodwitError("link-test needs two different endpoints (got \(from) twice)", hint: "e.g. `godwit lab link-test h1 h2`")
        }
        for endpoint in [origin, destination] where !LabNamespace.exists(endpoint.netns) {
            throw GodwitError("\(endpoint.name) of lab '\(lab.name)' is missing its namespace \(endpoint.netns)",
                              hint: "recreate the lab with `godwit lab down --name \(lab.name)` and `godwit lab up --name \(lab.name)`")
        }
        // Each lab host has a private port space; a random port only avoids a concurrent test.
        let port = UInt16.random(in: 20000...60000)
        let connectTimeout = 10.0
        let sink = try Probe(LabNamespace.enter(destination.netns) + [executable] + sinkArguments
            + ["--port", "\(port)", "--seconds", "\(seconds)", "--accept-timeout", "\(connectTimeout)", "--lifeline"])
        let source: Probe
        do {
            source = try Probe(LabNamespace.enter(origin.netns) + [executable] + sourceArguments
                + ["--address", destination.address, "--port", "\(port)", "--seconds", "\(seconds + connectTimeout + 5)",
                   "--connect-timeout", "\(connectTimeout)", "--lifeline"])
        } catch {
            sink.stop()
            throw error
        }
        // Every wait is bounded; whatever overruns is killed.
        let sinkFinished = sink.wait(timeout: seconds + 2 * connectTimeout + 5)
        _ = source.wait(timeout: 3)
        guard sinkFinished else {
            throw GodwitError("the link test did not finish in time", hint: "check the lab with `godwit lab status --name \(lab.name)`")
        }
        guard sink.status == 0,
              let sample = try? JSONDecoder().decode(LinkSample.self, from: Data(sink.stdout.utf8)) else {
            let reason = [sink.errorLine, source.errorLine].filter { !$0.isEmpty }.joined(separator: "; ")
            throw GodwitError("link test \(from) -> \(to) failed: \(reason.isEmpty ? "no result from the sink" : reason)",
                              hint: "check connectivity: `nsenter --net=\(origin.netnsPath) ping -c1 \(destination.address)`")
        }
        return LinkTestResult(
            lab: lab.name, from: origin.name, to: destination.name, bytes: sample.bytes, seconds: sample.seconds,
            megabitsPerSecond: sample.megabitsPerSecond,
            fromRate: LabShaper.current(of: origin)?.description ?? "unlimited",
            toRate: LabShaper.current(of: destination)?.description ?? "unlimited")
    }
}

/// A child process with captured output and a bounded wait. Output is read after exit,
/// which is fine for the few lines a probe prints (far below a pipe's capacity). Its stdin
/// is a lifeline: a pipe we never write, which closes when we exit however we exit, so a
/// probe started with `--lifeline` never outlives its link test (Process puts children in
/// their own process group, so a Ctrl-C would not reach them).
final class Probe {
    private let process = Process()
    private let outPipe = Pipe(), errPipe = Pipe(), lifeline = Pipe()
    private let exited = DispatchSemaphore(value: 0)
    private(set) var stdout = "", stderr = ""

    init(_ argv: [String]) throws {
        process.executableURL = URL(fileURLWithPath: try Command.resolve(argv[0]))
        process.arguments = Array(argv.dropFirst())
        process.standardOutput = outPipe
        process.standardError = errPipe
        process.standardInput = lifeline
        process.terminationHandler = { [exited] _ in exited.signal() }
        do {
            try process.run()
        } catch {
            throw GodwitError("cannot start \(argv[0]): \(error.localizedDescription)", hint: "is util-linux (nsenter) installed?")
        }
    }

    var status: Int32 { process.isRunning ? -1 : process.terminationStatus }
    /// The "Error: ..." line of a failed godwit, without its prefix and hint.
    var errorLine: String {
        let lines = stderr.split(separator: "\n").map(String.init)
        if let line = lines.first(where: { $0.hasPrefix("Error: ") }) { return String(line.dropFirst("Error: ".count)) }
        return lines.last(where: { !$0.trimmingCharacters(in: .whitespaces).isEmpty }) ?? ""
    }

    /// Waits up to `timeout` seconds, then kills. Returns whether it exited on its own.
    @discardableResult
    func wait(timeout: Double) -> Bool {
        if let exitedOnTime { return exitedOnTime }
        let onTime = exited.wait(timeout: .now() + timeout) == .success
        if !onTime {
            kill(process.processIdentifier, SIGKILL)
            exited.wait()
        }
        stdout = String(decoding: outPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        stderr = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        try? lifeline.fileHandleForWriting.close()
        exitedOnTime = onTime
        return onTime
    }

    private var exitedOnTime: Bool?

    func stop() { wait(timeout: 0) }
}
