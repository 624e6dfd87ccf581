import Foundation

/// A fresh directory under /tmp, removed by `remove()`; tests use `defer { dir.remove() }`.
struct TemporaryDirectory {
    let url: URL

    init(_ label: String = "trust") throws {
        url = URL(fileURLWithPath: NSTemporaryDirectory())
            .appendingPathComponent("godwit-\(label)-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// In-memory `TrustStorage` for tests that don't care about files.
@testable import Trust
import NIOConcurrencyHelpers

final class MemoryTrustStorage: TrustStorage {
    let saved = NIOLockedValueBox(TrustState())
    let failNextSave = NIOLockedValueBox(false)

    func load() throws -> TrustState { saved.withLockedValue { $0 } }

    func save(_ state: TrustState) throws {
        if failNextSave.withLockedValue({ let fail = $0; $0 = false; return fail }) {
            throw TestFailure("disk full (simulated)")
        }
        saved.withLockedValue { $0 = state }
    }
}

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
