import Foundation
import Testing
@testable import Checkpoint

@Suite struct CRIUArgumentsTests {
    let criu = CRIU(binary: CRIUBinary(path: "/bin/false", source: .setting))

    @Test func dumpOfAContainerLocksNetworkAndKeepsTCP() {
        var options = DumpOptions(pid: 42, imagesDirectory: "/tmp/img")
        options.freezerCgroup = "/sys/fs/cgroup/freezer/godwit/web"
        let args = criu.dumpArguments(options)
        #expect(args.starts(with: ["dump", "-t", "42", "-D", "/tmp/img"]))
        #expect(args.contains("--tcp-established"))
        #expect(args.contains("--manage-cgroups=full"))
        #expect(args.joined(separator: " ").contains("--network-lock nftables"))
        #expect(args.joined(separator: " ").contains("--freeze-cgroup /sys/fs/cgroup/freezer/godwit/web"))
        #expect(!args.contains("--lazy-pages"))
    }

    @Test func dumpSkipsConnectionsNotYetAcceptedUnlessTold() {
        var options = DumpOptions(pid: 42, imagesDirectory: "/tmp/img")
        #expect(criu.dumpArguments(options).filter { $0 == "--skip-in-flight" }.count == 1)
        options.lazyPages = PageServerAddress(address: "127.0.0.1", port: 27000)
        #expect(criu.dumpArguments(options).contains("--skip-in-flight"), "lazy dumps serve busy servers too")
        options.skipInFlight = false
        #expect(!criu.dumpArguments(options).contains("--skip-in-flight"))
        // Only the dump decides what to leave out; a restore has no queue to skip.
        #expect(!criu.restoreArguments(RestoreOptions(imagesDirectory: "/d", rootfs: "/r", pidFile: "/p")).contains("--skip-in-flight"))
    }

    @Test func lazyDumpNamesItsPageServer() {
        var options = DumpOptions(pid: 1, imagesDirectory: "/d")
        options.lazyPages = PageServerAddress(address: "127.0.0.1", port: 27000)
        #expect(criu.dumpArguments(options).joined(separator: " ").contains("--lazy-pages --address 127.0.0.1 --port 27000"))
    }

    @Test func lazyDumpOverAHandedConnectionNeverListens() {
        var options = DumpOptions(pid: 1, imagesDirectory: "/d")
        options.lazyPages = PageServerAddress(address: "127.0.0.1", port: 27000)
        options.lazyPagesSocket = 9
        let args = criu.dumpArguments(options).joined(separator: " ")
        #expect(args.contains("--lazy-pages --ps-socket \(CRIUProcess.pageServerFD)"), "\(args)")
        #expect(!args.contains("--address") && !args.contains("--port"), "\(args)")
    }

    @Test func statusFDIsPassedOnlyWhenSet() {
        var options = DumpOptions(pid: 1, imagesDirectory: "/d")
        options.lazyPages = PageServerAddress(address: "127.0.0.1", port: 27000)
        #expect(!criu.dumpArguments(options).contains("--status-fd"))
        options.statusFD = 3
        let args = criu.dumpArguments(options)
        #expect(args.joined(separator: " ").hasSuffix("--lazy-pages --address 127.0.0.1 --port 27000 --status-fd 3"))
        #expect(args.filter { $0 == "--status-fd" }.count == 1)
    }

    @Test func lazyPagesDaemonArguments() {
        let address = PageServerAddress(address: "127.0.0.1", port: 27001)
        let plain = LazyPagesDaemon.arguments(from: .address(address), directory: "/d")
        #expect(plain == ["lazy-pages", "--page-server", "--address", "127.0.0.1", "--port", "27001", "-D", "/d", "-o", "lazy-pages.log"])
        let withStatus = LazyPagesDaemon.arguments(from: .address(address), directory: "/d", statusFD: 3)
        #expect(withStatus == plain + ["--status-fd", "3"])
        // Godwit's proxy: an inherited connection, no address, nothing listens.
        let inherited = LazyPagesDaemon.arguments(from: .inheritedSocket, directory: "/d")
        #expect(inherited == ["lazy-pages", "--page-server", "--ps-socket", String(CRIUProcess.pageServerFD), "-D", "/d", "-o", "lazy-pages.log"])
    }

    @Test func networkLockIsNftablesOnDumpAndRestore() {
        let dump = criu.dumpArguments(DumpOptions(pid: 1, imagesDirectory: "/d")).joined(separator: " ")
        let restore = criu.restoreArguments(RestoreOptions(imagesDirectory: "/d", rootfs: "/r", pidFile: "/p")).joined(separator: " ")
        #expect(dump.contains("--network-lock nftables") && restore.contains("--network-lock nftables"))
    }

    @Test func leftoverNetworkLockTablesAreOnlyCRIUs() {
        let listing = """
        table inet filter
        table inet CRIU-8f2a1c
        table ip nat
        table ip6 CRIU-1234
        table inet CRIU-with extra words
        """
        let tables = CRIUNetworkLock.leftoverTables(inListing: listing)
        #expect(tables.map { "\($0.family) \($0.name)" } == ["inet CRIU-8f2a1c", "ip6 CRIU-1234"])
        #expect(CRIUNetworkLock.leftoverTables(inListing: "").isEmpty)
    }

    @Test func restorePutsTheVethOnThisHostsBridge() {
        var options = RestoreOptions(imagesDirectory: "/d", rootfs: "/r", pidFile: "/p")
        options.veths = [VethMapping(containerInterface: "eth0", hostInterface: "gw1234", bridge: "br0")]
        options.cgroupRoot = "/godwit-lab-h2"
        let joined = criu.restoreArguments(options).joined(separator: " ")
        #expect(joined.contains("--external veth[eth0]:gw1234@br0"))
        #expect(joined.contains("--root /r"))
        #expect(joined.contains("-d --pidfile /p"))
        #expect(joined.contains("--cgroup-root /godwit-lab-h2"))
    }

    @Test func logErrorSkipsHarmlessRlimitLine() {
        let log = """
        Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: Operation not permitted
        Error (criu/files-reg.c:1790): Can't lookup mount=24 for fd=0 path=/dev/null
        Error (criu/cr-dump.c:1975): Dumping FAILED.
        """
        #expect(CRIULog.firstError(in: log) == "Error (criu/files-reg.c:1790): Can't lookup mount=24 for fd=0 path=/dev/null")
    }

    @Test func statsDecodeFromImageBytes() throws {
        // service magic, stats magic, one entry: stats_entry{dump{frozen_time=1500 (field 2), pages_written=300 (field 7)}}
        let dump: [UInt8] = [0x10, 0xdc, 0x0b, 0x38, 0xac, 0x02]
        let entry: [UInt8] = [0x0a, UInt8(dump.count)] + dump
        var bytes: [UInt8] = []
        for word: UInt32 in [0x5510_5940, 0x5709_3306, UInt32(entry.count)] {
            withUnsafeBytes(of: word.littleEndian) { bytes += $0 }
        }
        bytes += entry
        var stats = CRIUStats()
        for e in try ImageFile(data: Data(bytes)).entries { try stats.merge(statsEntry: e) }
        #expect(stats.frozenTime == 1500)
        #expect(stats.pagesWritten == 300)
        #expect(stats.restoreTime == nil)
    }

    @Test func truncatedImageIsAnError() {
        var bytes: [UInt8] = []
        for word: UInt32 in [0x5510_5940, 0x5709_3306, 100] { withUnsafeBytes(of: word.littleEndian) { bytes += $0 } }
        #expect(throws: (any Error).self) { try ImageFile(data: Data(bytes)) }
    }
}
