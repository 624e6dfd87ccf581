import API
import AsyncHTTPClient
import Foundation
import GodwitCore
import NIOCore

extension GodwitClient {
    public func serverInfo() async throws -> ServerInfo { try await call(.GET, "/1.0") }

    // MARK: containers

    static func container(_ name: String) -> String { "/1.0/containers/" + escape(name) }

    public func containers() async throws -> [ContainerInfo] { try await call(.GET, "/1.0/containers") }
    public func container(_ name: String) async throws -> ContainerInfo { try await call(.GET, Self.container(name)) }

    public func launch(_ request: LaunchRequest) async throws -> OperationInfo {
        try await call(.POST, "/1.0/containers", body: request)
    }

    public func delete(_ name: String, force: Bool) async throws -> OperationInfo {
        try await call(.DELETE, Self.container(name) + (force ? "?force=1" : ""))
    }

    public func setState(_ name: String, _ put: ContainerStatePut) async throws -> OperationInfo {
        try await call(.PUT, Self.container(name) + "/state", body: put)
    }

    public func state(_ name: String) async throws -> ContainerState { try await call(.GET, Self.container(name) + "/state") }

    public func patchConfig(_ name: String, _ patch: ContainerPatch) async throws -> ContainerInfo {
        try await call(.PATCH, Self.container(name), body: patch)
    }

    public func replaceConfig(_ name: String, _ put: ContainerPut) async throws -> ContainerInfo {
        try await call(.PUT, Self.container(name), body: put)
    }

    public func execPlan(_ name: String, _ request: ExecRequest) async throws -> ExecPlan {
        try await call(.POST, Self.container(name) + "/exec", body: request)
    }

    public func checkpointCheck(_ name: String) async throws -> CheckpointCheck {
        try await call(.GET, Self.container(name) + "/checkpoint-check")
    }
    public func console(_ name: String) async throws -> ConsoleLog { try await call(.GET, Self.container(name) + "/console") }

    // MARK: images

    public func images() async throws -> [ImageInfo] { try await call(.GET, "/1.0/images") }

    public func networks() async throws -> [NetworkInfo] { try await call(.GET, "/1.0/networks") }
    public func network(_ name: String) async throws -> NetworkInfo {
        try await call(.GET, "/1.0/networks/" + (name.addingPercentEncoding(withAllowedCharacters: .urlPathAllowed) ?? name))
    }

    public func importImage(_ request: ImageImportRequest) async throws -> OperationInfo {
        try await call(.POST, "/1.0/images", body: request)
    }

    public func buildImage(_ request: ImageBuildRequest) async throws -> OperationInfo {
        try await call(.POST, "/1.0/images/build", body: request)
    }

    public func exportImage(_ alias: String, _ request: ImageExportRequest) async throws -> OperationInfo {
        try await call(.POST, "/1.0/images/" + Self.escape(alias) + "/export", body: request)
    }

    public func deleteImage(_ alias: String) async throws {
        let _: [String: String] = try await call(.DELETE, "/1.0/images/" + Self.escape(alias))
    }

    // MARK: operations

    public func operations() async throws -> [OperationInfo] { try await call(.GET, "/1.0/operations") }
    public func operation(_ id: String) async throws -> OperationInfo { try await call(.GET, "/1.0/operations/" + Self.escape(id)) }

    /// nil timeout: as long as it takes.
    public func wait(_ id: String, timeout: Double?) async throws -> OperationInfo {
        let query = timeout.map { "?timeout=" + Self.escapeQueryValue("\($0)") } ?? ""
        return try await call(.GET, "/1.0/operations/\(Self.escape(id))/wait" + query, timeout: .hours(24 * 365))
    }

    public func cancel(_ id: String) async throws -> OperationInfo { try await call(.DELETE, "/1.0/operations/" + Self.escape(id)) }

    /// Follows an operation to its end, reporting each change of progress; throws the
    /// operation's error (with its context) if it failed or was cancelled.
    @discardableResult
    public func follow(_ operation: OperationInfo, progress: (OperationInfo) -> Void = { _ in }) async throws -> OperationInfo {
        var current = operation
        var lastProgress = current.progress
        if lastProgress != nil { progress(current) }
        while !current.status.isFinal {
            current = try await wait(current.id, timeout: 0.5)
            if current.progress != lastProgress, !current.status.isFinal {
                lastProgress = current.progress
                progress(current)
            }
        }
        switch current.status {
        case .success: return current
        case .cancelled:
            throw GodwitError("\(current.description): cancelled", context: [("operation", current.id)])
        default:
            if let error = current.error { throw GodwitError(error) }
            throw GodwitError("\(current.description) failed", context: [("operation", current.id)])
        }
    }

    /// `GET /1.0/events` as a stream of events (newline-delimited JSON).
    public func events(types: [EventType] = []) async throws -> AsyncThrowingStream<Event, any Error> {
        let query = types.isEmpty ? "" : "?type=" + types.map(\.rawValue).joined(separator: ",")
        try checkReachable()
        let request = HTTPClientRequest(url: try url("/1.0/events" + query))
        let response: HTTPClientResponse
        do {
            response = try await HTTPClient.shared.execute(request, timeout: .hours(24 * 365))
        } catch {
            throw unreachable(error)
        }
        return AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    var pending = Data()
                    let decoder = APICoding.decoder()
                    for try await chunk in response.body {
                        pending.append(contentsOf: chunk.readableBytesView)
                        while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                            let line = pending[pending.startIndex..<newline]
                            pending = Data(pending[pending.index(after: newline)...])
                            if !line.isEmpty { continuation.yield(try decoder.decode(Event.self, from: Data(line))) }
                        }
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }
}
