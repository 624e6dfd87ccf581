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

struct TestFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
