import Foundation
import GodwitCore
import Testing
@testable import Checkpoint

/// The real CRIU's side of --status-fd when it fails before it is ready: the status pipe
/// closes without a byte and the caller hears CRIU's own first error at once. (The ready
/// side needs a container: LazyMigrationTests and PreCopyEndToEndTests.)
@Suite(.enabled(if: HostEnvironment.isRoot && (try? CRIU.locate()) != nil, "needs root and `make setup`'s CRIU"))
struct CRIUReadinessTests {
    func scratch() throws -> String {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("godwit-readiness-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    @Test func lazyDumpOfAMissingTaskFailsWithCRIUsError() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var options = DumpOptions(pid: Int32.max - 1, imagesDirectory: dir)
        options.lazyPages = PageServerAddress(address: "127.0.0.1", port: try PageServerClient.freePort())
        let dump = try LazyDump(criu: try CRIU.locate(), options: options)
        defer { dump.kill() }
        let start = Date()
        let error = #expect(throws: GodwitError.self) { try dump.waitUntilServing(timeout: 30) }
        #expect(Date().timeIntervalSince(start) < 10, "EOF, not the timeout")
        #expect(error?.message.contains("Error (") == true, "\(String(describing: error))")
        #expect(dump.waitForExit(timeout: 10).map { $0 != 0 } == true)
        #expect(dump.options.statusFD == CRIUProcess.statusFD)
    }

    @Test func lazyPagesWithoutImagesFailsWithCRIUsError() throws {
        let dir = try scratch()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let daemon = try LazyPagesDaemon(criu: try CRIU.locate(),
                                         address: PageServerAddress(address: "127.0.0.1", port: try PageServerClient.freePort()),
                                         directory: dir)
        defer { daemon.kill() }
        let start = Date()
        let error = #expect(throws: GodwitError.self) { try daemon.waitUntilReady(timeout: 30) }
        #expect(Date().timeIntervalSince(start) < 10, "EOF, not the timeout")
        #expect(error?.message.contains("criu lazy-pages did not start") == true, "\(String(describing: error))")
    }
}
