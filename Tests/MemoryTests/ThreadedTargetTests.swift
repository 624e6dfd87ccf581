import Foundation
import GodwitCore
import Testing
@testable import Memory

/// A multithreaded target the probe child can't be (it is forked from a threaded parent
/// and may not start threads): a Python process whose worker THREAD writes pages of a
/// private anonymous mapping while its main thread sits in read() on stdin, the thread
/// we inject into. Skipped when python3 is missing.
final class PythonThreadedTarget {
    static let script = """
    import ctypes, mmap, sys, threading
    N = 64
    m = mmap.mmap(-1, N * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    for i in range(N): m[i * 4096] = 1
    go, done = threading.Event(), threading.Event()
    pages = []
    def worker():
        while True:
            go.wait(); go.clear()
            for i in pages: m[i * 4096] = (m[i * 4096] + 1) % 256
            done.set()
    threading.Thread(target=worker, daemon=True).start()
    print(ctypes.addressof(ctypes.c_char.from_buffer(m)), flush=True)
    for line in sys.stdin:
        pages[:] = [int(x) for x in line.split()]
        go.set(); done.wait(); done.clear()
        print("ok", flush=True)
    """
    let process = Process()
    let input = Pipe(), output = Pipe()
    var base: UInt64 = 0
    let pages = 64

    init() throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", Self.script]
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        guard let line = readLine(), let address = UInt64(line) else {
            throw GodwitError("python target did not report its mapping")
        }
        base = address
    }

    var pid: pid_t { process.processIdentifier }
    var range: Range<UInt64> { base..<(base + UInt64(pages) * 4096) }

    private func readLine() -> String? {
        var bytes: [UInt8] = []
        while true {
            let chunk = output.fileHandleForReading.readData(ofLength: 1)
            guard let byte = chunk.first else { return nil }
            if byte == 0x0A { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }

    /// Has the worker thread write `list`, waits until it did.
    func threadWrites(_ list: [Int]) throws {
        input.fileHandleForWriting.write(Data((list.map(String.init).joined(separator: " ") + "\n").utf8))
        guard readLine() == "ok" else { throw GodwitError("python target stopped answering") }
    }

    func terminate() {
        if process.isRunning { kill(pid, SIGKILL) }
        process.waitUntilExit()
    }
}

@Suite struct ThreadedTargetTests {
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/python3")))
    func writesFromAnotherThreadAreTrackedExactly() throws {
        let target = try PythonThreadedTarget()
        defer { target.terminate() }
        let threads = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(target.pid)/task")
        #expect(threads.count >= 2)
        let tracker = try UffdWriteTracker(pid: target.pid)
        defer { tracker.close() }
        #expect(try tracker.collectWritten(in: target.range).pageCount == target.pages)
        for round in [[0, 4, 63], [], Array(stride(from: 1, to: 64, by: 2)), [7]] {
            try target.threadWrites(round)
            let written = try tracker.collectWritten(in: target.range)
            let pages = written.flatMap { $0.pageAddresses.map { Int(($0 - target.base) / 4096) } }
            #expect(pages == round)
        }
        // The whole-process round works on a real interpreter's address space too.
        let everything = try tracker.collectWritten()
        #expect(tracker.lastRegistration.refused.isEmpty, "\(tracker.lastRegistration.refused)")
        #expect(everything.allSatisfy { $0.categories.contains(.written) })
        tracker.close()
        try target.threadWrites([1, 2])
    }
}
