import Foundation
import Testing
import GodwitCore

/// Tests of workloads/memtouch.c, run as a plain child process. Each test kills and reaps
/// its memtouch even when an expectation fails (`defer { run.killAndReap() }`). There are no
/// timing assertions beyond lower bounds that a stopped process can't miss.
@Suite struct MemtouchTests {
    @Test(arguments: [false, true])
    func smallRunVerifiesAndExitsZero(wholePages: Bool) throws {
        let run = try MemtouchRun(["--size", "16", "--stride", "1"] + (wholePages ? ["--whole-pages"] : []))
        defer { run.killAndReap() }
        let ready = try run.waitForReport("ready") { $0.bool("ready") }
        #expect(ready.int("pages") == 16 * 1024 * 1024 / ready.int("page_size"))
        #expect(ready.string("phase") == "running")
        #expect(ready.int("pid") == Int(run.pid))
        Thread.sleep(forTimeInterval: 1.0)
        let (status, final) = try run.stop()
        #expect(status == 0)
        #expect(final.string("phase") == "exited")
        #expect(final.verification.string("verdict") == "pass")
        #expect(final.verification.int("pages_checked") == final.int("pages"))
        #expect(final.verification.int("bad_pages") == 0)
        #expect(final.verification.isNull("first_bad_page"))
        #expect(final.int("pages_written") > 0)
        #expect(final.int("iterations") >= final.int("pages_written"))
        #expect(final.bool("whole_pages") == wholePages)
        // Every iteration lands in exactly one histogram bucket.
        #expect(final.histogram.reduce(0, +) == final.int("iterations"))
        // The report file holds the same final report as stdout.
        let file = try run.readReport()
        #expect(file.string("phase") == "exited")
        #expect(file.int("iterations") == final.int("iterations"))
    }

    @Test func stoppedProcessCountsAMissedSleep() throws {
        let run = try MemtouchRun(["--size", "16"])
        defer { run.killAndReap() }
        _ = try run.waitForReport("ready") { $0.bool("ready") }
        Thread.sleep(forTimeInterval: 0.2)
        kill(run.pid, SIGSTOP)
        Thread.sleep(forTimeInterval: 0.3)
        kill(run.pid, SIGCONT)
        Thread.sleep(forTimeInterval: 0.2)
        let (status, final) = try run.stop()
        #expect(status == 0)
        #expect(final.int("missed_sleeps") >= 1)
        #expect(final.int("longest_gap_us") >= 250_000)
        #expect(final.int("missed_time_us") >= final.int("longest_gap_us"))
        #expect(final.int("longest_gap_at_us") > final.int("ready_at_us"))
        #expect(final.string("longest_gap_at")?.hasSuffix("Z") == true)
        // The gap is in a bucket of at least 204.8 ms (buckets are [..., <409600, ...]).
        let buckets = final.histogramBuckets
        #expect(buckets.contains { $0.lowerBoundUs >= 204_800 && $0.count >= 1 })
        // The longest missed sleeps, longest first, start with the stop.
        let longest = final.array("longest_missed")
        #expect((longest.first?["gap_us"] as? NSNumber)?.intValue == final.int("longest_gap_us"))
        #expect((longest.first?["at_us"] as? NSNumber)?.intValue == final.int("longest_gap_at_us"))
        let gaps = longest.compactMap { ($0["gap_us"] as? NSNumber)?.intValue }
        #expect(gaps == gaps.sorted(by: >))
        #expect(final.array("recent_missed").count == min(8, final.int("missed_sleeps")))
    }

    /// Flips one byte of the region through /proc/PID/mem on a page the loop never
    /// rewrites there (off the stride pattern, or past word 0 in one-word mode).
    @Test(arguments: [
        Corruption(stride: 2, wholePages: false, page: 1001, offset: 777),
        Corruption(stride: 1, wholePages: false, page: 3, offset: 2000),
        Corruption(stride: 0, wholePages: true, page: 4095, offset: 4095),
        Corruption(stride: 4, wholePages: true, page: 4094, offset: 0),
    ])
    func verificationFindsAFlippedByte(_ c: Corruption) throws {
        let run = try MemtouchRun(["--size", "16", "--stride", String(c.stride)] + (c.wholePages ? ["--whole-pages"] : []))
        defer { run.killAndReap() }
        let ready = try run.waitForReport("ready") { $0.bool("ready") }
        let pageSize = ready.int("page_size")
        let address = ready.int("region_start") + c.page * pageSize + c.offset
        try ProcMem.flipByte(pid: run.pid, address: address)

        kill(run.pid, SIGUSR1)
        let checked = try run.waitForReport("verification after SIGUSR1") { $0.verification.int("runs") >= 1 }
        #expect(checked.verification.string("verdict") == "fail")
        #expect(checked.verification.int("bad_pages") == 1)
        #expect(checked.verification.int("first_bad_page") == c.page)
        #expect(checked.verification.int("first_bad_offset") == c.offset)
        #expect(checked.string("phase") == "running")

        let (status, final) = try run.stop()
        #expect(status == 1)
        #expect(final.verification.string("verdict") == "fail")
        #expect(final.verification.int("bad_pages") == 1)
        #expect(final.verification.int("first_bad_page") == c.page)
    }

    /// Reads the region from outside while the process is stopped: the pages that differ
    /// from their initial content must be exactly the stride pattern (the loop has wrapped
    /// around a 4 MiB region by then), and each iteration writes one page.
    @Test(arguments: [0, 1, 2, 4])
    func strideSelectsThePagesWritten(stride: Int) throws {
        let run = try MemtouchRun(["--size", "4", "--stride", String(stride), "--report-interval-ms", "50"])
        defer { run.killAndReap() }
        let ready = try run.waitForReport("ready") { $0.bool("ready") }
        let pages = ready.int("pages"), pageSize = ready.int("page_size")
        let patternPages = stride == 0 ? 0 : (pages + stride - 1) / stride
        #expect(ready.int("pattern_pages") == patternPages)
        _ = try run.waitForReport("two passes over the pattern") {
            stride == 0 ? $0.int("iterations") >= 2000 : $0.int("pages_written") >= 2 * patternPages
        }

        kill(run.pid, SIGSTOP)
        let memory = try ProcMem.read(pid: run.pid, address: ready.int("region_start"), count: pages * pageSize)
        kill(run.pid, SIGCONT)
        let words = pageSize / 8
        var written: [Int] = []
        var badWritten = 0
        memory.withUnsafeBytes { raw in
            for p in 0..<pages {
                let initial = (0..<words).map { MemtouchPattern.word(page: p, generation: 0, index: $0) }
                let actual = (0..<words).map { raw.load(fromByteOffset: (p * words + $0) * 8, as: UInt64.self) }
                if actual == initial { continue }
                written.append(p)
                // One-word mode: only word 0 changes.
                if Array(actual.dropFirst()) != Array(initial.dropFirst()) { badWritten += 1 }
            }
        }
        let expected = stride == 0 ? [] : Array(Swift.stride(from: 0, to: pages, by: stride))
        #expect(written == expected)
        #expect(badWritten == 0)

        let (status, final) = try run.stop()
        #expect(status == 0)
        #expect(final.verification.string("verdict") == "pass")
        #expect(final.int("iterations") > 0)
        if stride == 0 {
            #expect(final.int("pages_written") == 0)
            #expect(final.verification.int("pages_written_distinct") == 0)
        } else {
            #expect(final.int("pages_written") == final.int("iterations"))
            #expect(final.verification.int("pages_written_distinct") == patternPages)
        }
    }

    @Test func rateCapsPagesWritten() throws {
        let run = try MemtouchRun(["--size", "4", "--rate", "200"])
        defer { run.killAndReap() }
        _ = try run.waitForReport("ready") { $0.bool("ready") }
        Thread.sleep(forTimeInterval: 1.0)
        let (status, final) = try run.stop()
        #expect(status == 0)
        let elapsedUs = final.int("report_at_us") - final.int("ready_at_us")
        let written = final.int("pages_written")
        #expect(written > 0)
        #expect(written <= final.int("iterations"))
        #expect(Double(written) <= 200 * Double(elapsedUs) / 1e6 + 2)
        #expect(final.verification.string("verdict") == "pass")
    }

    @Test func controlFifoVerifiesAndStops() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        let fifo = dir.path + "/control"
        let run = try MemtouchRun(["--size", "8", "--control", fifo], dir: dir)
        defer { run.killAndReap() }
        _ = try run.waitForReport("ready") { $0.bool("ready") }
        try ProcMem.writeFifo(fifo, "verify\n")
        let checked = try run.waitForReport("verification after fifo") { $0.verification.int("runs") >= 1 }
        #expect(checked.verification.string("verdict") == "pass")
        try ProcMem.writeFifo(fifo, "stop\n")
        let status = try run.waitForExit()
        #expect(status == 0)
        #expect(try run.readReport().string("phase") == "exited")
    }

    @Test func badArgumentsExitTwoAndHelpExitsZero() throws {
        let binary = try MemtouchBinary.path()
        let bad = try Command.run([binary, "--stride", "x"])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("--stride"))
        #expect(try Command.run([binary, "--size", "0"]).status == 2)
        #expect(try Command.run([binary, "extra"]).status == 2)
        let help = try Command.run([binary, "--help"])
        #expect(help.status == 0)
        #expect(help.stdout.contains("--threshold-us"))
    }

    /// The containers are busybox without libc: memtouch must run in an empty root.
    @Test(.enabled(if: HostEnvironment.isRoot, "chroot needs root; `make test` runs as root"))
    func runsInAnEmptyRoot() throws {
        let dir = try TempDir()
        defer { dir.remove() }
        try FileManager.default.copyItem(atPath: try MemtouchBinary.path(), toPath: dir.path + "/memtouch")
        // chroot execs memtouch, so the pid we signal is memtouch's.
        let run = try MemtouchRun(argv: ["/usr/sbin/chroot", dir.path, "/memtouch", "--size", "2", "--report", "/report.json"],
                                  reportPath: dir.path + "/report.json")
        defer { run.killAndReap() }
        _ = try run.waitForReport("ready") { $0.bool("ready") }
        let (status, final) = try run.stop()
        #expect(status == 0)
        #expect(final.verification.string("verdict") == "pass")
    }
}
