import API
import Foundation
import GodwitCore
import Hummingbird
import HummingbirdTesting
import Testing
@testable import Daemon

/// The HTTP layer: status codes, LXD envelopes and the error body, through the real router.
@Suite(.serialized) struct RouteTests {
    func app(_ harness: Harness) -> some ApplicationProtocol {
        Application(router: APIRoutes(daemon: harness.context).router())
    }

    func body<T: Encodable>(_ value: T) throws -> ByteBuffer {
        ByteBuffer(bytes: try APICoding.encoder().encode(value))
    }

    func decode<T: Decodable>(_ type: T.Type, _ response: TestResponse) throws -> T {
        try APICoding.decoder().decode(T.self, from: Data(response.body.readableBytesView))
    }

    @Test func launchIsAsyncAndErrorsCarryHints() async throws {
        let h = try Harness()
        try await app(h).test(.router) { client in
            let info = try await client.execute(uri: "/1.0", method: .get)
            #expect(info.status == .ok)
            #expect(try decode(ResponseEnvelope<ServerInfo>.self, info).metadata?.driver == "fake")

            let launch = try await client.execute(uri: "/1.0/containers", method: .post,
                                                  body: try body(LaunchRequest(name: "c1", image: "busybox")))
            #expect(launch.status == .accepted)
            let envelope = try decode(AsyncResponse.self, launch)
            #expect(envelope.type == "async" && envelope.statusCode == 100)
            let id = try #require(envelope.metadata?.id)
            #expect(envelope.operation == "/1.0/operations/\(id)")

            let waited = try await client.execute(uri: "/1.0/operations/\(id)/wait?timeout=30", method: .get)
            #expect(try decode(ResponseEnvelope<OperationInfo>.self, waited).metadata?.status == .success)

            let duplicate = try await client.execute(uri: "/1.0/containers", method: .post,
                                                     body: try body(LaunchRequest(name: "c1", image: "busybox")))
            #expect(duplicate.status == .conflict)
            let error = try decode(ErrorResponse.self, duplicate)
            #expect(error.errorCode == 409 && error.error == "container 'c1' already exists" && error.hint != nil)

            let badJSON = try await client.execute(uri: "/1.0/containers", method: .post, body: ByteBuffer(string: "{\"name\": 3}"))
            #expect(badJSON.status == .badRequest)
            #expect(try decode(ErrorResponse.self, badJSON).error.hasPrefix("invalid request body"))

            let missing = try await client.execute(uri: "/1.0/containers/nope", method: .get)
            #expect(missing.status == .notFound)
            #expect(try decode(ErrorResponse.self, missing).error == "container 'nope' not found")

            let noRoute = try await client.execute(uri: "/2.0/nothing", method: .get)
            #expect(noRoute.status == .notFound)

            let badState = try await client.execute(uri: "/1.0/containers/c1/state", method: .put,
                                                    body: ByteBuffer(string: "{\"action\": \"start\"}"))
            #expect(badState.status == .badRequest)

            let patch = try await client.execute(uri: "/1.0/containers/c1", method: .patch,
                                                 body: ByteBuffer(string: "{\"config\": {\"limits.memory\": \"1GiB\", \"environment.X\": \"y\"}}"))
            #expect(patch.status == .ok)
            let config = try decode(ResponseEnvelope<ContainerInfo>.self, patch).metadata?.config
            #expect(config?.userKeys == ["limits.memory": String(1 << 30), "environment.X": "y"])
            let unset = try await client.execute(uri: "/1.0/containers/c1", method: .patch,
                                                 body: ByteBuffer(string: "{\"config\": {\"environment.X\": null}}"))
            #expect(try decode(ResponseEnvelope<ContainerInfo>.self, unset).metadata?.config.userKeys == ["limits.memory": String(1 << 30)])

            let list = try await client.execute(uri: "/1.0/containers", method: .get)
            #expect(try decode(ResponseEnvelope<[ContainerInfo]>.self, list).metadata?.map(\.name) == ["c1"])

            let delete = try await client.execute(uri: "/1.0/containers/c1?force=1", method: .delete)
            #expect(delete.status == .accepted)
        }
    }

    @Test func cancellingThroughTheAPI() async throws {
        let h = try Harness()
        _ = try await h.launch("warm")
        h.driver.delay = .seconds(30)
        try await app(h).test(.router) { client in
            let launch = try await client.execute(uri: "/1.0/containers", method: .post,
                                                  body: try body(LaunchRequest(name: "slow", image: "busybox")))
            let id = try #require(try decode(AsyncResponse.self, launch).metadata?.id)
            let busy = try await client.execute(uri: "/1.0/containers/slow", method: .delete)
            #expect(busy.status == .conflict)
            let cancel = try await client.execute(uri: "/1.0/operations/\(id)", method: .delete)
            #expect(cancel.status == .ok)
            let waited = try await client.execute(uri: "/1.0/operations/\(id)/wait", method: .get)
            #expect(try decode(ResponseEnvelope<OperationInfo>.self, waited).metadata?.status == .cancelled)
            let gone = try await client.execute(uri: "/1.0/containers/slow", method: .get)
            #expect(gone.status == .notFound)
        }
    }

    /// Numbers a client controls, which used to trap godwitd (Int64(1e20), a Duration past
    /// the clock's range): each is a 400 saying what was wrong, and the daemon answers on.
    @Test func outOfRangeNumbersAreBadRequests() async throws {
        let h = try Harness()
        let launched = try await h.launch("c1")
        try await app(h).test(.router) { client in
            for timeout in ["1e17", "1e%2B17", "nan", "inf", "-inf", "1e400", "soon", "2592001"] {
                let wait = try await client.execute(uri: "/1.0/operations/\(launched.id)/wait?timeout=\(timeout)", method: .get)
                #expect(wait.status == .badRequest, "\(timeout)")
                let error = try decode(ErrorResponse.self, wait)
                #expect(error.error.hasPrefix("invalid timeout '"), "\(timeout): \(error.error)")
                #expect(error.hint?.contains("-1 to wait as long as it takes") == true)
            }
            let plus = try await client.execute(uri: "/1.0/operations/\(launched.id)/wait?timeout=1e%2B17", method: .get)
            #expect(try decode(ErrorResponse.self, plus).error == "invalid timeout '1e+17': more than 2592000 s (30 days)")
            let fine = try await client.execute(uri: "/1.0/operations/\(launched.id)/wait?timeout=0.5", method: .get)
            #expect(try decode(ResponseEnvelope<OperationInfo>.self, fine).metadata?.status == .success)

            let stop = try await client.execute(uri: "/1.0/containers/c1/state", method: .put,
                                                body: ByteBuffer(string: "{\"action\": \"stop\", \"timeout\": 9223372036854775807}"))
            #expect(stop.status == .badRequest)
            #expect(try decode(ErrorResponse.self, stop).error.hasPrefix("invalid timeout '9223372036854775807'"))

            let memory = try await client.execute(uri: "/1.0/containers/c1", method: .patch,
                                                  body: ByteBuffer(string: "{\"config\": {\"limits.memory\": \"1e20GiB\"}}"))
            #expect(memory.status == .badRequest)
            #expect(try decode(ErrorResponse.self, memory).error.hasPrefix("invalid value '1e20GiB' for limits.memory"))

            let list = try await client.execute(uri: "/1.0/containers", method: .get)
            #expect(try decode(ResponseEnvelope<[ContainerInfo]>.self, list).metadata?.map(\.name) == ["c1"])
        }
    }
}

extension Dictionary where Key == String, Value == String {
    /// A container's configuration without what the daemon sets itself (volatile.*).
    var userKeys: [String: String] { filter { !$0.key.hasPrefix("volatile.") } }
}
