import Foundation
import Memory
import GodwitCore
@testable import Migration
import Testing

/// A page store on a full file system: a run whose write fails is not held, so it is
/// fetched from the source instead of read back as EOF or as a hole of zeros.
@Suite(.enabled(if: geteuid() == 0, "mounts a tmpfs"))
struct PageStoreFullDiskTests {
    @Test func aFailedWriteForgetsItsPages() throws {
        let mountPoint = NSTemporaryDirectory() + "godwit-full-" + UUID().uuidString.prefix(8).lowercased()
        try FileManager.default.createDirectory(atPath: mountPoint, withIntermediateDirectories: true)
        defer {
            _ = try? Command.run(["umount", mountPoint])
            try? FileManager.default.removeItem(atPath: mountPoint)
        }
        // Room for 8 pages of data in all.
        try Command.check(["mount", "-t", "tmpfs", "-o", "size=\(8 * 4096)", "godwit-test", mountPoint])
        let store = try PageStore(directory: mountPoint + "/pages")
        let page = Int(getpagesize())
        let base: UInt64 = 0x7000_0000
        let small = [UInt8](repeating: 0xab, count: 4 * page)
        try small.withUnsafeBytes { try store.store(nsPID: 1, vaddr: base, count: 4, data: $0) }
        let large = [UInt8](repeating: 0xcd, count: 16 * page)
        #expect(throws: (any Error).self) {
            try large.withUnsafeBytes { try store.store(nsPID: 1, vaddr: base + 64 * UInt64(page), count: 16, data: $0) }
        }
        var buffer = [UInt8](repeating: 0, count: 16 * page)
        let held = try buffer.withUnsafeMutableBytes { try store.read(nsPID: 1, vaddr: base + 64 * UInt64(page), count: 16, into: $0) }
        #expect(held.allSatisfy { !$0 }, "pages whose write failed are held: \(held)")
        // What was stored before still reads back.
        let before = try buffer.withUnsafeMutableBytes { try store.read(nsPID: 1, vaddr: base, count: 4, into: $0) }
        #expect(before.allSatisfy { $0 } && buffer.prefix(4 * page).allSatisfy { $0 == 0xab })
    }
}
