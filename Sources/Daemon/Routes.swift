import API
import Foundation
import GodwitCore
import Hummingbird

/// The REST API, shaped like LXD's: sync answers in a `{type: sync, metadata}` envelope,
/// long work as `{type: async, operation: /1.0/operations/ID}` with status 202, failures as
/// `{error, error_code, hint, context}`.
public struct APIRoutes: Sendable {
    let daemon: DaemonContext

    public init(daemon: DaemonContext) { self.daemon = daemon }

    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        router.middlewares.add(ErrorMiddleware())
        let containers = daemon.containers
        let operations = daemon.operations

        router.get("/1.0") { _, _ in try Self.sync(daemon.serverInfo()) }

        // MARK: containers
        router.get("/1.0/containers") { _, _ in try Self.sync(containers.list()) }
        router.post("/1.0/containers") { request, _ in
            try Self.async(containers.launch(try await Self.decode(LaunchRequest.self, request)))
        }
        router.get("/1.0/containers/:name") { _, context in
            try Self.sync(containers.get(try context.parameters.require("name")))
        }
        router.put("/1.0/containers/:name") { request, context in
            let put = try await Self.decode(ContainerPut.self, request)
            return try Self.sync(await containers.replaceConfig(try context.parameters.require("name"), put))
        }
        router.patch("/1.0/containers/:name") { request, context in
            let patch = try await Self.decode(ContainerPatch.self, request)
            return try Self.sync(await containers.patchConfig(try context.parameters.require("name"), patch))
        }
        router.delete("/1.0/containers/:name") { request, context in
            let force = request.uri.queryParameters.get("force").map { $0 == "1" || $0 == "true" } ?? false
            return try Self.async(containers.delete(try context.parameters.require("name"), force: force))
        }
        router.get("/1.0/containers/:name/state") { _, context in
            try Self.sync(containers.state(try context.parameters.require("name")))
        }
        router.put("/1.0/containers/:name/state") { request, context in
            let put = try await Self.decode(ContainerStatePut.self, request)
            return try Self.async(containers.changeState(try context.parameters.require("name"), put))
        }
        router.post("/1.0/containers/:name/exec") { request, context in
            let exec = try await Self.decode(ExecRequest.self, request)
            return try Self.sync(containers.execPlan(try context.parameters.require("name"), exec))
        }
        router.get("/1.0/containers/:name/checkpoint-check") { _, context in
            try Self.sync(containers.checkpointCheck(try context.parameters.require("name")))
        }
        router.get("/1.0/containers/:name/console") { _, context in
            try Self.sync(containers.console(try context.parameters.require("name")))
        }

        // MARK: images
        let images = daemon.images
        router.get("/1.0/networks") { _, _ in try Self.sync(try daemon.networks()) }
        router.get("/1.0/networks/:name") { _, context in
            let name = try context.parameters.require("name")
            guard let network = try daemon.networks().first(where: { $0.name == name }) else {
                throw RequestError.notFound(GodwitError("no network '\(name)' on \(daemon.options.hostName)",
                                                        hint: "`godwit network list` shows this host's networks"))
            }
            return try Self.sync(network)
        }
        router.get("/1.0/images") { _, _ in try Self.sync(daemon.store.images().map(\.info)) }
        router.get("/1.0/images/:alias") { _, context in
            let alias = try context.parameters.require("alias")
            guard let record = try daemon.store.image(alias) else {
                throw RequestError.notFound(GodwitError("image '\(alias)' not found", hint: "`godwit image list` shows the images"))
            }
            return try Self.sync(record.info)
        }
        router.post("/1.0/images") { request, _ in
            let body = try await Self.decode(ImageImportRequest.self, request)
            try RequestError.validating { try ContainerName.validate(body.alias) }
            try Self.refuseExistingAlias(body.alias, daemon)
            try ImageStore.validateImport(body)
            return Self.async(operations.start("Importing image \(body.alias)",
                                               resources: ["images": ["/1.0/images/\(body.alias)"]]) { handle in
                let record = try await images.importImage(body.tarball, rootfs: body.rootfs, alias: body.alias, progress: handle)
                return ["fingerprint": record.fingerprint]
            })
        }
        router.post("/1.0/images/build") { request, _ in
            let body = try await Self.decode(ImageBuildRequest.self, request)
            try RequestError.validating { try ContainerName.validate(body.alias) }
            guard body.distribution == "debian" else {
                throw RequestError.badRequest(GodwitError("cannot build '\(body.distribution.prefix(100))' images", hint: "only debian is supported"))
            }
            let recipe = try DebianRecipe(release: body.release, include: body.include)
            try Self.refuseExistingAlias(body.alias, daemon)
            return Self.async(operations.start("Building image \(body.alias) (Debian \(recipe.release))",
                                               resources: ["images": ["/1.0/images/\(body.alias)"]]) { handle in
                let record = try await images.buildDebian(recipe, alias: body.alias, refresh: body.refresh, progress: handle)
                return ["fingerprint": record.fingerprint]
            })
        }
        router.post("/1.0/images/:alias/export") { request, context in
            let alias = try context.parameters.require("alias")
            let body = try await Self.decode(ImageExportRequest.self, request)
            guard body.path.hasPrefix("/") else {
                throw RequestError.badRequest(GodwitError("the export path must be absolute: \(body.path)"))
            }
            _ = try ImageStore.exportCompression(body.path)
            guard try images.isKnown(alias) else {
                throw RequestError.notFound(GodwitError("image '\(alias)' not found", hint: "`godwit image list` shows the images"))
            }
            var isDirectory: ObjCBool = false
            let parent = URL(fileURLWithPath: body.path).deletingLastPathComponent().path
            guard FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory), isDirectory.boolValue else {
                throw RequestError.badRequest(GodwitError("no such directory on the daemon's host: \(parent)"))
            }
            guard !FileManager.default.fileExists(atPath: body.path) else {
                throw RequestError.conflict(GodwitError("\(body.path) already exists", hint: "remove it or choose another path"))
            }
            return Self.async(operations.start("Exporting image \(alias)", resources: ["images": ["/1.0/images/\(alias)"]]) { handle in
                try await images.export(alias, to: body.path, progress: handle)
                return ["path": body.path]
            })
        }
        router.delete("/1.0/images/:alias") { _, context in
            try await images.delete(try context.parameters.require("alias"))
            return try Self.sync([String: String]())
        }

        // MARK: trust and remotes (TrustRoutes.swift)
        TrustRoutes.add(to: router, daemon: daemon)

        // MARK: moves (Migration/MoveRoutes.swift)
        MoveRoutes.add(to: router, daemon: daemon)

        // MARK: operations and events
        router.get("/1.0/operations") { _, _ in try Self.sync(operations.list()) }
        router.get("/1.0/operations/:id") { _, context in
            let id = try context.parameters.require("id")
            guard let operation = operations.operation(id) else { throw OperationManager.notFound(id) }
            return try Self.sync(operation)
        }
        router.get("/1.0/operations/:id/wait") { request, context in
            // LXD: timeout=-1 (or absent) waits for as long as it takes.
            let timeout = try RequestError.validating { try WaitTimeout.parse(request.uri.queryParameters.get("timeout")) }
            return try Self.sync(await operations.wait(try context.parameters.require("id"), timeout: timeout))
        }
        router.delete("/1.0/operations/:id") { _, context in
            try Self.sync(operations.cancel(try context.parameters.require("id")))
        }
        router.get("/1.0/events") { request, _ in
            let wanted = Set((request.uri.queryParameters.get("type") ?? "").split(separator: ",")
                .compactMap { EventType(rawValue: String($0)) })
            return Self.eventStream(daemon.events.subscribe(), types: wanted)
        }
        return router
    }

    static func refuseExistingAlias(_ alias: String, _ daemon: DaemonContext) throws {
        if try daemon.store.image(alias) != nil {
            throw RequestError.conflict(GodwitError("image alias '\(alias)' already exists",
                                                    hint: "choose another alias, or `godwit image delete \(alias)` first"))
        }
    }

    // MARK: encoding

    static let jsonHeaders: HTTPFields = [.contentType: "application/json"]

    static func sync<T: Codable & Sendable>(_ value: T) throws -> Response {
        try json(ResponseEnvelope.sync(value), status: .ok)
    }

    static func async(_ operation: OperationInfo) -> Response {
        // Encoding an OperationInfo cannot fail; a failure here would be a programming error.
        (try? json(AsyncResponse.async(operation), status: .accepted)) ?? Response(status: .internalServerError)
    }

    static func json<T: Encodable>(_ value: T, status: HTTPResponse.Status) throws -> Response {
        var data = try APICoding.encoder().encode(value)
        data.append(UInt8(ascii: "\n"))
        return Response(status: status, headers: jsonHeaders, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    static func decode<T: Decodable>(_ type: T.Type, _ request: Request) async throws -> T {
        var request = request
        let buffer = try await request.collectBody(upTo: 4 << 20)
        return try APICoding.decoder().decode(T.self, from: Data(buffer.readableBytesView))
    }

    /// Newline-delimited JSON, one event per line, flushed as it happens (chunked).
    static func eventStream(_ stream: AsyncStream<Event>, types: Set<EventType>) -> Response {
        let body = ResponseBody { writer in
            let encoder = APICoding.encoder()
            for await event in stream where types.isEmpty || types.contains(event.type) {
                var data = try encoder.encode(event)
                data.append(UInt8(ascii: "\n"))
                try await writer.write(ByteBuffer(bytes: data))
            }
            try await writer.finish(nil)
        }
        return Response(status: .ok, headers: [.contentType: "application/x-ndjson"], body: body)
    }
}

/// Turns every error into the API's error body, so clients always get JSON with a hint.
struct ErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context,
                next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError {
            let message = error.status == .notFound ? "no such API endpoint: \(request.method) \(request.uri.path)"
                                                    : (error.body ?? error.status.reasonPhrase)
            return errorResponse(ErrorResponse(error: message, errorCode: error.status.code))
        } catch {
            return errorResponse(RequestError.response(for: error))
        }
    }

    func errorResponse(_ body: ErrorResponse) -> Response {
        var envelope = body
        if envelope.errorCode < 400 { envelope.errorCode = 500 }
        let data = (try? APICoding.encoder().encode(envelope)) ?? Data("{\"error\":\"internal error\"}".utf8)
        return Response(status: HTTPResponse.Status(code: envelope.errorCode),
                        headers: [.contentType: "application/json"],
                        body: .init(byteBuffer: ByteBuffer(bytes: data + [UInt8(ascii: "\n")])))
    }
}
