import Foundation
import Testing
@testable import Migration

/// What arrives from another host is the container's state, its memory among it: root only.
@Suite struct ImageTransferTests {
    func mode(_ path: String) -> mode_t {
        var info = stat()
        return lstat(path, &info) == 0 ? info.st_mode & 0o7777 : 0
    }

    @Test func receivedImagesAreRootOnly() throws {
        let root = NSTemporaryDirectory() + "godwit-imagetransfer-" + UUID().uuidString
        defer { try? FileManager.default.removeItem(atPath: root) }
        let source = root + "/source", target = root + "/received"
        try FileManager.default.createDirectory(atPath: source, withIntermediateDirectories: true)
        // CRIU writes its images 0644.
        for (name, text) in [("inventory.img", "inv"), ("pages-1.img", String(repeating: "p", count: 10_000))] {
            _ = FileManager.default.createFile(atPath: source + "/" + name, contents: Data(text.utf8),
                                               attributes: [.posixPermissions: 0o644])
        }
        var fds: [Int32] = [0, 0]
        try #require(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let (sending, receiving) = (fds[0], fds[1])
        defer { close(sending); close(receiving) }
        let sender = Thread { _ = try? ImageTransfer.send(directory: source, to: sending) }
        sender.start()
        #expect(try ImageTransfer.receive(from: receiving, into: target) == 10_003)
        #expect(mode(target) == 0o700)
        for name in ["inventory.img", "pages-1.img"] {
            #expect(mode(target + "/" + name) == 0o600, "\(name)")
        }
        #expect(FileManager.default.contents(atPath: target + "/inventory.img") == Data("inv".utf8))
    }

    @Test func pageStoresAreRootOnly() throws {
        let store = try PageStore()
        defer { store.destroy() }
        #expect(mode(store.directory) == 0o700)
    }
}
