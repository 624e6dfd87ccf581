import Foundation
import Testing
import GodwitCore

/// Finds memtouch next to the test bundle (the build products directory, e.g.
/// .build/debug) and (re)builds it there with scripts/build-workloads.sh, which only
/// compiles when the source is newer: a missing binary fails the tests, never skips them.
enum MemtouchBinary {
    private static let built: Result<String, Error> = Result {
        let dir = GodwitPaths.executableDirectory.path
        guard let script = GodwitPaths.findUpwards("scripts/build-workloads.sh") else {
            throw GodwitError("scripts/build-workloads.sh not found above \(dir)")
        }
        try Command.check(["bash", script.path, dir], hint: "memtouch must compile with -Wall -Wextra -Werror")
        let binary = dir + "/memtouch"
        guard FileManager.default.isExecutableFile(atPath: binary) else {
            throw GodwitError("\(binary) missing after build-workloads.sh")
        }
        return binary
    }

    static func path() throws -> String { try built.get() }
}

/// memtouch's page content, mirrored from workloads/memtouch.c (page_base, fill_page).
enum MemtouchPattern {
    static let seed: UInt64 = 0x6d65_6d74_6f75_6368
    static let wordStep: UInt64 = 0x9e37_79b9_7f4a_7c15

    static func mix64(_ value: UInt64) -> UInt64 {
        var x = value &+ 0x9e37_79b9_7f4a_7c15
        x = (x ^ (x >> 30)) &* 0xbf58_476d_1ce4_e5b9
        x = (x ^ (x >> 27)) &* 0x94d0_49bb_1331_11eb
        return x ^ (x >> 31)
    }

    static func word(page: Int, generation: UInt32, index: Int) -> UInt64 {
        mix64((UInt64(page) << 32) ^ UInt64(generation) ^ seed) ^ (UInt64(index) &* wordStep)
    }
}

/// A memtouch report (the JSON it writes to --report and, at exit, to stdout).
/// A missing key is recorded as a test issue rather than defaulting silently.
struct MemtouchReport: CustomStringConvertible {
    let json: [String: Any]

    init(_ json: [String: Any]) { self.json = json }

    init(data: Data) throws {
        guard let object = try JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw GodwitError("report is not a JSON object: \(String(decoding: data, as: UTF8.self))")
        }
        json = object
    }

    var description: String { "\(json)" }

    func int(_ key: String) -> Int {
        guard let number = json[key] as? NSNumber else {
            Issue.record("report has no integer \(key): \(self)")
            return Int.min
        }
        return number.intValue
    }

    func bool(_ key: String) -> Bool { json[key] as? Bool ?? false }
    func string(_ key: String) -> String? { json[key] as? String }
    func isNull(_ key: String) -> Bool { json[key] is NSNull }
    func array(_ key: String) -> [[String: Any]] { json[key] as? [[String: Any]] ?? [] }

    var verification: MemtouchReport { MemtouchReport(json["verification"] as? [String: Any] ?? [:]) }

    var histogram: [Int] { histogramBuckets.map(\.count) }

    /// Buckets as (lower bound, count): [{lt_us: 200}, {lt_us: 400}, ..., {ge_us: 1000000}].
    var histogramBuckets: [(lowerBoundUs: Int, count: Int)] {
        var lower = 0
        return array("gap_histogram").map { bucket in
            let count = (bucket["count"] as? NSNumber)?.intValue ?? 0
            if let ge = bucket["ge_us"] as? NSNumber { return (ge.intValue, count) }
            defer { lower = (bucket["lt_us"] as? NSNumber)?.intValue ?? lower }
            return (lower, count)
        }
    }
}

/// A private directory under /tmp.
final class TempDir {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "/godwit-wl-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

/// One memtouch child process. `killAndReap()` (in a defer) makes sure it is gone and reaped.
final class MemtouchRun {
    let process = Process()
    let reportPath: String
    private let stdoutPipe = Pipe(), stderrPipe = Pipe()
    private let ownedDir: TempDir?
    private var collected: (stdout: Data, stderr: Data)?

    var pid: pid_t { process.processIdentifier }

    /// memtouch with `arguments` and `--report` in `dir` (a new private directory if nil).
    convenience init(_ arguments: [String], dir: TempDir? = nil) throws {
        let binary = try MemtouchBinary.path()
        let owned = dir == nil ? try TempDir() : nil
        let report = (dir ?? owned!).path + "/report.json"
        try self.init(argv: [binary, "--report", report] + arguments, reportPath: report, ownedDir: owned)
    }

    init(argv: [String], reportPath: String, ownedDir: TempDir? = nil) throws {
        self.reportPath = reportPath
        self.ownedDir = ownedDir
        process.executableURL = URL(fileURLWithPath: argv[0])
        process.arguments = Array(argv.dropFirst())
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = stdoutPipe
        process.standardError = stderrPipe
        do {
            try process.run()
        } catch {
            ownedDir?.remove()
            throw error
        }
    }

    func readReport() throws -> MemtouchReport {
        try MemtouchReport(data: Data(contentsOf: URL(fileURLWithPath: reportPath)))
    }

    /// Polls the report file until `condition` holds; fails if memtouch exits first.
    func waitForReport(_ what: String, timeout: TimeInterval = 30,
                       _ condition: (MemtouchReport) -> Bool) throws -> MemtouchReport {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            // The file is replaced atomically (rename), so a report is always complete.
            if let data = try? Data(contentsOf: URL(fileURLWithPath: reportPath)),
               let report = try? MemtouchReport(data: data), condition(report) {
                return report
            }
            if !process.isRunning {
                throw GodwitError("memtouch exited (status \(process.terminationStatus)) before \(what): \(output().stderr)")
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
        throw GodwitError("timed out after \(Int(timeout)) s waiting for \(what); stderr: \(output().stderr)")
    }

    /// Sends `signal` and returns the exit status and the final report memtouch printed.
    func stop(_ signal: Int32 = SIGTERM) throws -> (status: Int32, report: MemtouchReport) {
        Foundation.kill(pid, signal)
        let status = try waitForExit()
        let out = output()
        do {
            return (status, try MemtouchReport(data: Data(out.stdout.utf8)))
        } catch {
            throw GodwitError("no final report on stdout (status \(status)); stderr: \(out.stderr)")
        }
    }

    /// Exit code, or 128 + signal number.
    func waitForExit(timeout: TimeInterval = 30) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning {
            if Date() >= deadline {
                killAndReap()
                throw GodwitError("memtouch did not exit within \(Int(timeout)) s")
            }
            Thread.sleep(forTimeInterval: 0.01)
        }
        return process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
    }

    /// stdout and stderr, read once the process has exited (both are small).
    func output() -> (stdout: String, stderr: String) {
        if process.isRunning { return ("", "(still running)") }
        if collected == nil {
            collected = (stdoutPipe.fileHandleForReading.readDataToEndOfFile(),
                         stderrPipe.fileHandleForReading.readDataToEndOfFile())
        }
        return (String(decoding: collected!.stdout, as: UTF8.self), String(decoding: collected!.stderr, as: UTF8.self))
    }

    func killAndReap() {
        if process.isRunning {
            Foundation.kill(pid, SIGKILL)
            Foundation.kill(pid, SIGCONT)
            process.waitUntilExit()
        }
        ownedDir?.remove()
    }
}

/// Another process's memory through /proc/PID/mem (root, or its parent under Yama 1).
enum ProcMem {
    static func read(pid: pid_t, address: Int, count: Int) throws -> Data {
        let fd = try open(pid: pid, flags: O_RDONLY)
        defer { close(fd) }
        var data = Data(count: count)
        let got = data.withUnsafeMutableBytes { pread(fd, $0.baseAddress, count, off_t(address)) }
        guard got == count else { throw GodwitError("pread /proc/\(pid)/mem at \(address): \(got) of \(count) bytes, errno \(errno)") }
        return data
    }

    static func flipByte(pid: pid_t, address: Int) throws {
        let fd = try open(pid: pid, flags: O_RDWR)
        defer { close(fd) }
        var byte: UInt8 = 0
        guard pread(fd, &byte, 1, off_t(address)) == 1 else { throw GodwitError("pread /proc/\(pid)/mem: errno \(errno)") }
        byte ^= 0xff
        guard pwrite(fd, &byte, 1, off_t(address)) == 1 else { throw GodwitError("pwrite /proc/\(pid)/mem: errno \(errno)") }
    }

    private static func open(pid: pid_t, flags: Int32) throws -> Int32 {
        let fd = Foundation.open("/proc/\(pid)/mem", flags)
        guard fd >= 0 else { throw GodwitError("open /proc/\(pid)/mem: errno \(errno)") }
        return fd
    }

    /// Writes to a fifo that memtouch holds open (non-blocking: a missing reader fails).
    static func writeFifo(_ path: String, _ text: String) throws {
        let fd = Foundation.open(path, O_WRONLY | O_NONBLOCK)
        guard fd >= 0 else { throw GodwitError("open \(path): errno \(errno)") }
        defer { close(fd) }
        let written = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, text.utf8.count) }
        guard written == text.utf8.count else { throw GodwitError("write \(path): errno \(errno)") }
    }
}

/// Where a corruption test flips a byte.
struct Corruption: Sendable, CustomTestStringConvertible {
    var stride: Int
    var wholePages: Bool
    var page: Int
    var offset: Int

    var testDescription: String {
        "stride \(stride)\(wholePages ? " whole-pages" : ""), page \(page) offset \(offset)"
    }
}
