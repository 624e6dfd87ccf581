import API
import Foundation
import GodwitCore
@testable import Migration
import Testing

/// The destination's side of carrying an image: a peer may open the image channel only
/// when this host announced that it lacks the image, and only once. No root needed: the
/// refusal comes before any rsync runs.
@Suite struct ImageChannelTests {
    final class StubHost: DestinationHost, @unchecked Sendable {
        let imageStaging: String?
        init(imageStaging: String?) { self.imageStaging = imageStaging }
        var hostName: String { "stub" }
        var syncDirectory: String { "/nonexistent" }
        func restoreTarget(images: String, store: String) throws -> IncomingTarget { throw GodwitError("not in this test") }
        func adopt(pid: pid_t) throws {}
        func announce(pid: pid_t) {}
        func discard() async {}
        func markLost(_ why: String) {}
        func pagesPending(_ pending: Bool) {}
        func journal(_ phase: DestinationJournal.Phase?, pid: pid_t) {}
        func imageArrived() throws {}
    }

    func engine(staging: String?, in directory: String) throws -> DestinationEngine {
        let request = IncomingMigrationRequest(name: "c1", image: "tiny", imageFingerprint: String(repeating: "a", count: 64),
                                               config: [:], ipv4: nil, mac: "02:00:00:00:00:01", mode: .stopAndCopy,
                                               sourceHost: "h1", criuVersion: nil)
        return try DestinationEngine(id: "m1", request: request, host: StubHost(imageStaging: staging), directory: directory)
    }

    func scratch() -> String { NSTemporaryDirectory() + "godwit-image-channel-" + UUID().uuidString }

    @Test func anImageStreamThatWasNotAnnouncedIsRefused() throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = try engine(staging: nil, in: directory)
        #expect { _ = try engine.handler(for: .image) } throws: { error in
            "\(error)".contains("announced no image transfer")
        }
        // The container's own channels are not affected.
        #expect(engine.stateName == "receiving")
    }

    @Test func anAnnouncedImageChannelOpensOnceAndAFailedOneIsRecorded() async throws {
        let directory = scratch()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let engine = try engine(staging: directory + "/staging", in: directory)
        let handler = try engine.handler(for: .image)
        #expect(throws: (any Error).self) { _ = try engine.handler(for: .image) }
        // A peer that hangs up before its rsync command line: the transfer fails, and the
        // migration aborts with why.
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        close(fds[1])
        handler(fds[0])
        #expect(await waitUntilAsync { engine.status().phase == "aborted" })
        #expect(engine.status().reason?.contains("image did not arrive") == true, "\(engine.status())")
        #expect(engine.status().imageInstalled == nil)
    }

    /// The source's image phase ends on this field: it must survive the trip between daemons.
    @Test func theInstalledImageAndTheNeedForOneTravel() throws {
        var status = IncomingMigrationStatus(id: "m1", phase: "receiving")
        status.imageInstalled = true
        let decoded = try APICoding.decoder().decode(IncomingMigrationStatus.self, from: try APICoding.encoder().encode(status))
        #expect(decoded.imageInstalled == true)
        let answer = IncomingMigrationAnswer(id: "m1", secret: "s", streamPort: 1, imageNeeded: true)
        #expect(try APICoding.decoder().decode(IncomingMigrationAnswer.self, from: try APICoding.encoder().encode(answer)).imageNeeded == true)
        // An older destination's answer has no such field.
        let old = try APICoding.decoder().decode(IncomingMigrationAnswer.self, from: Data(#"{"id":"m1","secret":"s","streamPort":1}"#.utf8))
        #expect(old.imageNeeded == nil)
    }

    @Test func rsyncProgressLinesGiveTheBytesSoFar() {
        var lines = ProgressLines()
        #expect(lines.feed(ArraySlice(Array("      1,234,567  45%   12.34MB/s    0:00:01 (xfr#3, ir-chk=10/20)\r   2,0".utf8))) == 1_234_567)
        #expect(lines.feed(ArraySlice(Array("00,000 90%  1.00MB/s  0:00:02\r".utf8))) == 2_000_000)
        #expect(lines.feed(ArraySlice(Array("Number of files: 12\nTotal bytes sent: 99\n".utf8))) == nil)
        #expect(FilesystemSync.statistic("Total bytes sent", in: "  5 100% 1kB/s 0:00:00\r\nTotal bytes sent: 1,234\n") == 1234)
    }

    func waitUntilAsync(timeout: Double = 10, _ condition: @escaping () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }
}
