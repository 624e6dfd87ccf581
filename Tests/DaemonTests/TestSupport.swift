import API
import Foundation
import GodwitCore
@testable import Daemon

/// A fresh directory per test, removed when the test's scope ends.
final class TempDir {
    let url: URL
    init(_ label: String = "daemon") throws {
        url = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("godwit-\(label)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(at: url) }
}

/// A daemon context on a temp state dir with the fake driver and an in-file database.
struct Harness {
    let dir: TempDir
    let driver: FakeDriver
    let context: DaemonContext
    var containers: ContainerService { context.containers }
    var store: Store { context.store }

    init(subnet: String? = "10.77.1.0/29", gateway: String? = "10.77.1.1") throws {
        dir = try TempDir()
        driver = FakeDriver()
        var options = DaemonOptions(stateDir: dir.url)
        if let subnet { options.bridge = "br0"; options.subnet = subnet; options.gateway = gateway }
        for sub in ["images", "containers"] {
            try FileManager.default.createDirectory(at: dir.url.appendingPathComponent(sub), withIntermediateDirectories: true)
        }
        let store = try Store(path: dir.url.appendingPathComponent("godwit.db").path)
        context = try DaemonContext(options: options, store: store, driver: driver)
    }

    /// Waits for the operation and returns its final state.
    func finish(_ operation: OperationInfo) async throws -> OperationInfo {
        try await context.operations.wait(operation.id, timeout: .seconds(60))
    }

    func launch(_ name: String, config: [String: String] = [:]) async throws -> OperationInfo {
        try await finish(try containers.launch(LaunchRequest(name: name, image: "busybox", config: config)))
    }
}

func requestStatus(_ body: () async throws -> Void) async -> Int? {
    do { try await body(); return nil } catch let error as RequestError { return error.status } catch { return -1 }
}
