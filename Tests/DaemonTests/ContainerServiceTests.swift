import API
import Foundation
import GodwitCore
import Testing
@testable import Daemon

/// The daemon's container logic against the FakeDriver: validation, state machine,
/// rollback of failed launches, adoption after a restart.
@Suite(.serialized) struct ContainerServiceTests {
    @Test func launchBuildsBusyboxLeasesAnAddressAndStarts() async throws {
        let h = try Harness()
        let done = try await h.launch("c1", config: ["limits.memory": "256MiB"])
        #expect(done.status == .success, "\(String(describing: done.error))")
        let info = try h.containers.get("c1")
        #expect(info.status == .running)
        #expect(info.ipv4 == "10.77.1.2")
        #expect(info.mac == StableMAC.forContainer("c1"))
        #expect(info.config.userKeys == ["limits.memory": String(256 << 20)])
        #expect(info.config["volatile.idmap.base"] != nil, "an unprivileged container without its map: \(info.config)")
        #expect(info.pid == h.driver.process("c1")?.pid)
        #expect(h.driver.calls == ["create c1", "start c1"])

        // The image was built once, with a working init and busybox links.
        let image = try #require(try h.store.image("busybox"))
        let rootfs = URL(fileURLWithPath: image.path).appendingPathComponent("rootfs")
        #expect(FileManager.default.isExecutableFile(atPath: rootfs.appendingPathComponent("sbin/init").path))
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: rootfs.appendingPathComponent("bin/sh").path) == "/bin/busybox")
        #expect(try h.containers.console("c1").log.contains("fake init started"))

        _ = try await h.launch("c2")
        #expect(try h.containers.get("c2").ipv4 == "10.77.1.3")
        #expect(try h.store.images().count == 1)
    }

    @Test func badRequestsCreateNothing() async throws {
        let h = try Harness()
        #expect(await requestStatus { _ = try h.containers.launch(LaunchRequest(name: "bad_name", image: "busybox")) } == 400)
        #expect(await requestStatus { _ = try h.containers.launch(LaunchRequest(name: "c1", image: "nosuch")) } == 400)
        #expect(await requestStatus {
            _ = try h.containers.launch(LaunchRequest(name: "c1", image: "busybox", config: ["limits.memory": "lots"]))
        } == 400)
        #expect(await requestStatus {
            _ = try h.containers.launch(LaunchRequest(name: "c1", image: "busybox", config: ["no.such.key": "1"]))
        } == 400)
        #expect(try h.containers.list().isEmpty)
        #expect(h.driver.calls.isEmpty)

        _ = try await h.launch("c1")
        #expect(await requestStatus { _ = try h.containers.launch(LaunchRequest(name: "c1", image: "busybox")) } == 409)
        #expect(try h.containers.list().count == 1)
    }

    @Test func aFailedStartRollsEverythingBack() async throws {
        let h = try Harness()
        h.driver.failing = [.start]
        let done = try await h.launch("c1")
        #expect(done.status == .failure)
        #expect(done.error?.error.contains("start of 'c1' failed") == true)
        #expect(done.error?.context.contains(["container", "c1"]) == true)
        #expect(try h.containers.list().isEmpty)
        #expect(!h.driver.isCreated("c1"))
        #expect(h.driver.calls == ["create c1", "start c1", "destroy c1"])
        #expect(!FileManager.default.fileExists(atPath: h.dir.url.appendingPathComponent("containers/c1").path))
        // The name and the address are free again.
        h.driver.failing = []
        #expect(try await h.launch("c1").status == .success)
        #expect(try h.containers.get("c1").ipv4 == "10.77.1.2")
    }

    @Test func cancellingALaunchRollsBack() async throws {
        let h = try Harness()
        _ = try await h.launch("warm")  // builds the image first, so the cancel hits the start
        h.driver.delay = .seconds(30)
        let op = try h.containers.launch(LaunchRequest(name: "c1", image: "busybox"))
        try await Task.sleep(for: .milliseconds(200))
        _ = try h.context.operations.cancel(op.id)
        let done = try await h.finish(op)
        #expect(done.status == .cancelled)
        #expect(try h.store.container("c1") == nil)
        #expect(!h.driver.isCreated("c1"))
    }

    @Test func stateMachine() async throws {
        let h = try Harness()
        _ = try await h.launch("c1")
        // Wrong-state requests are refused before any operation starts.
        #expect(await requestStatus { _ = try h.containers.changeState("c1", .init(action: .start)) } == 400)
        #expect(await requestStatus { _ = try h.containers.changeState("c1", .init(action: .unfreeze)) } == 400)
        #expect(await requestStatus { _ = try h.containers.changeState("c1", .init(action: .freeze, stateful: true)) } == 400)
        #expect(await requestStatus { _ = try h.containers.changeState("nope", .init(action: .start)) } == 404)

        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .freeze))).status == .success)
        #expect(try h.containers.get("c1").status == .frozen)
        #expect(await requestStatus { _ = try h.containers.execPlan("c1", ExecRequest(command: ["true"])) } == 400)
        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .unfreeze))).status == .success)

        let firstPid = try h.containers.get("c1").pid
        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .restart))).status == .success)
        #expect(try h.containers.get("c1").status == .running)
        #expect(try h.containers.get("c1").pid != firstPid)

        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .stop))).status == .success)
        let stopped = try h.containers.get("c1")
        #expect(stopped.status == .stopped && stopped.pid == nil && !stopped.stateful)
        #expect(await requestStatus { _ = try h.containers.changeState("c1", .init(action: .stop)) } == 400)
        #expect(await requestStatus { _ = try h.containers.execPlan("c1", ExecRequest(command: ["true"])) } == 400)
        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .start))).status == .success)
    }

    @Test func statefulStopRestoresOnStart() async throws {
        let h = try Harness()
        _ = try await h.launch("c1")
        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .stop, stateful: true))).status == .success)
        #expect(try h.containers.get("c1").stateful)
        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .start))).status == .success)
        #expect(h.driver.calls.suffix(2) == ["checkpoint c1", "restore c1"])
        #expect(try h.containers.get("c1").stateful == false)
        #expect(try h.containers.console("c1").log.contains("fake init restored"))

        // A failed checkpoint leaves the container running.
        h.driver.failing = [.checkpoint]
        #expect(try await h.finish(try h.containers.changeState("c1", .init(action: .stop, stateful: true))).status == .failure)
        #expect(try h.containers.get("c1").status == .running)
    }

    @Test func deleteNeedsStopOrForce() async throws {
        let h = try Harness()
        _ = try await h.launch("c1")
        #expect(await requestStatus { _ = try h.containers.delete("c1", force: false) } == 400)
        #expect(try await h.finish(try h.containers.delete("c1", force: true)).status == .success)
        #expect(try h.containers.list().isEmpty)
        #expect(h.driver.calls.suffix(2) == ["stop c1", "destroy c1"])
        #expect(await requestStatus { _ = try h.containers.delete("c1", force: true) } == 404)
    }

    @Test func configIsValidatedMergedAndAppliedLive() async throws {
        let h = try Harness()
        _ = try await h.launch("c1", config: ["environment.A": "1"])
        let patched = try await h.containers.patchConfig("c1", ContainerPatch(config: ["limits.cpu": "0.5", "environment.A": nil]))
        #expect(patched.config.userKeys == ["limits.cpu": "0.5"])
        #expect(h.driver.config("c1")?.userKeys == ["limits.cpu": "0.5"])
        #expect(await requestStatus { _ = try await h.containers.patchConfig("c1", ContainerPatch(config: ["limits.cpu": "-3"])) } == 400)
        #expect(await requestStatus { _ = try await h.containers.patchConfig("c1", ContainerPatch(config: ["bogus": "1"])) } == 400)
        let put = try await h.containers.replaceConfig("c1", ContainerPut(config: ["limits.processes": "100"]))
        #expect(put.config.userKeys == ["limits.processes": "100"])
        #expect(put.config["volatile.idmap.base"] == patched.config["volatile.idmap.base"], "PUT dropped the id map")

        // When the driver can't apply it, nothing is saved.
        h.driver.failing = [.reconfigure]
        #expect(await requestStatus { _ = try await h.containers.patchConfig("c1", ContainerPatch(config: ["limits.cpu": "1"])) } == -1)
        #expect(try h.containers.get("c1").config.userKeys == ["limits.processes": "100"])
    }

    @Test func execPlansCarryTheEnvironment() async throws {
        let h = try Harness()
        _ = try await h.launch("c1", config: ["environment.FOO": "bar"])
        let plan = try h.containers.execPlan("c1", ExecRequest(command: ["sh", "-c", "exit 3"], environment: ["X": "y"]))
        #expect(plan.argv == ["sh", "-c", "exit 3"])
        #expect(plan.environment["FOO"] == "bar" && plan.environment["X"] == "y")
        #expect(plan.pid == h.driver.process("c1")?.pid)
        #expect(await requestStatus { _ = try h.containers.execPlan("c1", ExecRequest(command: [])) } == 400)
    }

    @Test func adoptionKeepsLiveContainersAndStopsDeadOnes() async throws {
        let h = try Harness()
        _ = try await h.launch("alive")
        _ = try await h.launch("dead")
        h.driver.crash("dead")
        // A launch the previous daemon never finished.
        _ = try h.store.insertContainer(ContainerRecord(name: "half", image: "busybox", imageFingerprint: "",
                                                        config: [:], status: .creating, mac: "02:00:00:00:00:01"),
                                        addresses: nil)
        let result = try await h.containers.adopt()
        #expect(result.adopted == ["alive"])
        #expect(result.stopped == ["dead"])
        #expect(result.removed == ["half"])
        #expect(try h.containers.get("dead").status == .stopped)
        #expect(try h.store.container("half") == nil)
    }

    @Test func theWatchdogNoticesDeadInits() async throws {
        let h = try Harness()
        _ = try await h.launch("c1")
        h.containers.checkLiveness()
        #expect(try h.containers.get("c1").status == .running)
        h.driver.crash("c1")
        h.containers.checkLiveness()
        #expect(try h.containers.get("c1").status == .stopped)
    }

    @Test func imagesImportAndDelete() async throws {
        let h = try Harness()
        let source = try TempDir("rootfs")
        try FileManager.default.createDirectory(at: source.url.appendingPathComponent("bin"), withIntermediateDirectories: true)
        try FileManager.default.createSymbolicLink(atPath: source.url.appendingPathComponent("bin/sh").path, withDestinationPath: "busybox")
        let tarball = try TempDir("tar")
        defer { withExtendedLifetime((source, tarball)) {} }
        let path = tarball.url.appendingPathComponent("rootfs.tar.gz").path
        try Command.check(["tar", "-C", source.url.path, "-czf", path, "."])
        let record = try await h.context.images.importImage(path, alias: "mine", progress: nil)
        #expect(FileManager.default.fileExists(atPath: h.context.images.rootfs(record).appendingPathComponent("bin").path))
        await #expect(throws: RequestError.self) { try await h.context.images.importImage(path, alias: "mine", progress: nil) }

        // Not a rootfs: refused, and nothing is left behind.
        let junk = tarball.url.appendingPathComponent("junk.tar").path
        try Command.check(["tar", "-C", tarball.url.path, "-cf", junk, "rootfs.tar.gz"])
        await #expect(throws: RequestError.self) { try await h.context.images.importImage(junk, alias: "junk", progress: nil) }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: h.context.images.directory.path)
        #expect(leftovers == [record.fingerprint])

        _ = try await h.finish(try h.containers.launch(LaunchRequest(name: "c1", image: "mine")))
        await #expect(throws: RequestError.self) { try await h.context.images.delete("mine") }
        _ = try await h.finish(try h.containers.delete("c1", force: true))
        try await h.context.images.delete("mine")
        #expect(!FileManager.default.fileExists(atPath: record.path))
    }
}
