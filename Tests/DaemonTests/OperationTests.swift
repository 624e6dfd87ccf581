import API
import Foundation
import GodwitCore
import Testing
@testable import Daemon

@Suite struct OperationTests {
    func manager() throws -> (OperationManager, EventBus) {
        let events = EventBus()
        return (OperationManager(store: try Store(), events: events), events)
    }

    @Test func successCarriesMetadataAndProgressEvents() async throws {
        let (operations, events) = try manager()
        let stream = events.subscribe()
        let op = operations.start("Testing", resources: ["containers": ["/1.0/containers/c1"]]) { handle in
            handle.progress("halfway", percent: 50)
            return ["answer": "42"]
        }
        let done = try await operations.wait(op.id, timeout: .seconds(10))
        #expect(done.status == .success)
        #expect(done.metadata == ["answer": "42"])
        #expect(done.resources["containers"] == ["/1.0/containers/c1"])
        var stages: [String] = []
        for await event in stream {
            if let progress = event.metadata.operation?.progress { stages.append(progress.stage) }
            if event.metadata.operation?.status.isFinal == true { break }
        }
        #expect(stages.contains("halfway"))
        #expect(try operations.list().map(\.id) == [op.id])
    }

    @Test func failureKeepsTheErrorAndItsContext() async throws {
        let (operations, _) = try manager()
        let op = operations.start("Failing", resources: [:]) { _ in
            throw GodwitError("disk on fire", hint: "call the fire brigade", context: [("container", "c1")])
        }
        let done = try await operations.wait(op.id, timeout: .seconds(10))
        #expect(done.status == .failure)
        #expect(done.error?.error == "disk on fire")
        #expect(done.error?.hint == "call the fire brigade")
        #expect(done.error?.context.contains(["container", "c1"]) == true)
        #expect(done.error?.context.contains(["operation", op.id]) == true)
    }

    @Test func cancelStopsTheWorkAtItsNextSafePoint() async throws {
        let (operations, _) = try manager()
        let op = operations.start("Sleeping", resources: [:]) { _ in
            try await Task.sleep(for: .seconds(60))
            return [:]
        }
        _ = try operations.cancel(op.id)
        let done = try await operations.wait(op.id, timeout: .seconds(10))
        #expect(done.status == .cancelled)
        // Cancelling a finished operation is a client error.
        #expect(throws: RequestError.self) { try operations.cancel(op.id) }
    }

    @Test func waitReturnsTheCurrentStateAfterItsTimeoutAndTheFinalOneWhenTheWorkEnds() async throws {
        let (operations, _) = try manager()
        // The work can't end before the test opens the gate: no race, no clock.
        let (gate, open) = AsyncStream<Void>.makeStream()
        let op = operations.start("Gated", resources: [:]) { _ in
            for await _ in gate { break }
            return ["done": "yes"]
        }
        // The timeout passes while the work waits at the gate: the operation as it is now.
        let current = try await operations.wait(op.id, timeout: .milliseconds(200))
        #expect(current.id == op.id && current.status == .running && current.metadata.isEmpty)

        // No timeout: wait returns only because the work ended, and says how it ended.
        async let finished = operations.wait(op.id, timeout: nil)
        open.yield()
        open.finish()
        let done = try await finished
        #expect(done.id == op.id && done.status == .success && done.metadata == ["done": "yes"])
        // A wait on a finished operation returns its final state at once.
        #expect(try await operations.wait(op.id, timeout: nil).status == .success)
        await operations.drain()
    }

    @Test func unknownOperationsAreNotFound() async throws {
        let (operations, _) = try manager()
        await #expect(throws: RequestError.self) { try await operations.wait("nope", timeout: nil) }
        #expect(throws: RequestError.self) { try operations.cancel("nope") }
    }

    @Test func closingTheBusEndsStreams() async throws {
        let events = EventBus()
        let stream = events.subscribe()
        events.close()
        var count = 0
        for await _ in stream { count += 1 }
        #expect(count == 0)
        #expect(events.subscriberCount == 0)
    }
}
