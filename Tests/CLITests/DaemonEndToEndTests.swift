import API
import Foundation
import GodwitCore
import Testing

/// The real `godwit` CLI against a real `godwitd` (fake driver) on a temp state dir.
@Suite(.serialized) struct DaemonEndToEndTests {
    @Test func aMissingDaemonIsReportedWithAHint() throws {
        let state = try StateDir()
        let result = try godwit(["list"], dir: state.path)
        #expect(result.status != 0)
        #expect(result.stderr.contains("error: cannot reach godwitd at \(state.path)/unix.socket"), "\(result.stderr)")
        #expect(result.stderr.contains("hint: start it with `godwitd --state-dir \(state.path) &`"), "\(result.stderr)")
    }

    @Test func containerLifecycleThroughTheCLI() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state, extraArguments: ["--bridge", "br0", "--subnet", "10.77.1.0/24"])
        defer { daemon.stop() }
        let dir = state.path

        let launch = try godwit(["launch", "busybox", "c1", "-c", "limits.memory=256MiB"], dir: dir)
        #expect(launch.status == 0, "\(launch.stderr)\n\(daemon.logText)")
        #expect(launch.stderr.contains("Launched c1"))

        let list = try godwit(["list"], dir: dir)
        #expect(list.status == 0)
        #expect(list.stdout.contains("NAME") && list.stdout.contains("IPV4"))
        let row = list.stdout.split(separator: "\n").first { $0.hasPrefix("c1 ") }.map(String.init) ?? ""
        #expect(row.contains("RUNNING") && row.contains("10.77.1.1"), "\(list.stdout)")

        let json = try godwit(["list", "--format", "json"], dir: dir)
        let containers = try APICoding.decoder().decode([ContainerInfo].self, from: Data(json.stdout.utf8))
        #expect(containers.map(\.name) == ["c1"])
        #expect(containers.first?.config["limits.memory"] == String(256 << 20))

        // Bad input: clear errors, non-zero exits, nothing created.
        let duplicate = try godwit(["launch", "busybox", "c1"], dir: dir)
        #expect(duplicate.status != 0 && duplicate.stderr.contains("error: container 'c1' already exists"), "\(duplicate.stderr)")
        let badName = try godwit(["launch", "busybox", "bad_name"], dir: dir)
        #expect(badName.status != 0 && badName.stderr.contains("invalid container name"))
        let badImage = try godwit(["launch", "nosuchimage", "c9"], dir: dir)
        #expect(badImage.status != 0 && badImage.stderr.contains("unknown image 'nosuchimage'"), "\(badImage.stderr)")
        #expect(badImage.stderr.contains("hint:"))
        let badValue = try godwit(["config", "set", "c1", "limits.memory", "lots"], dir: dir)
        #expect(badValue.status != 0 && badValue.stderr.contains("invalid value 'lots' for limits.memory"), "\(badValue.stderr)")
        let badKey = try godwit(["config", "set", "c1", "limits.bogus", "1"], dir: dir)
        #expect(badKey.status != 0 && badKey.stderr.contains("unknown configuration key 'limits.bogus'"))
        let wrongState = try godwit(["start", "c1"], dir: dir)
        #expect(wrongState.status != 0 && wrongState.stderr.contains("container 'c1' is running"), "\(wrongState.stderr)")
        let missing = try godwit(["info", "nope"], dir: dir)
        #expect(missing.status != 0 && missing.stderr.contains("container 'nope' not found"))
        #expect(try godwit(["list", "--format", "json"], dir: dir).stdout.contains("\"c9\"") == false)

        // config set / get / unset.
        #expect(try godwit(["config", "set", "c1", "limits.cpu", "0.5"], dir: dir).status == 0)
        #expect(try godwit(["config", "get", "c1", "limits.cpu"], dir: dir).stdout == "0.5\n")
        #expect(try godwit(["config", "get", "c1", "migration.incremental.memory.goal"], dir: dir).stdout == "70\n")
        #expect(try godwit(["config", "unset", "c1", "limits.cpu"], dir: dir).status == 0)
        // The user's key, and the id map's base the daemon chose (unprivileged by default).
        let shown = try godwit(["config", "show", "c1"], dir: dir).stdout.split(separator: "\n")
        #expect(shown.count == 2 && shown[0] == "limits.memory: \(256 << 20)" && shown[1].hasPrefix("volatile.idmap.base: "), "\(shown)")

        // exec passes stdout and the exit code through.
        let echo = try godwit(["exec", "c1", "--", "sh", "-c", "echo hello; exit 3"], dir: dir)
        #expect(echo.status == 3 && echo.stdout == "hello\n", "\(echo.stderr)")

        #expect(try godwit(["console", "c1", "--show-log"], dir: dir).stdout.contains("fake init started"))

        // stop / start, stateful.
        #expect(try godwit(["stop", "--stateful", "c1"], dir: dir).status == 0)
        #expect(try godwit(["list"], dir: dir).stdout.contains("STOPPED (stateful)"))
        #expect(try godwit(["start", "c1"], dir: dir).status == 0)
        #expect(try godwit(["console", "c1", "--show-log"], dir: dir).stdout.contains("fake init restored"))

        // delete needs --force while running.
        let refused = try godwit(["delete", "c1"], dir: dir)
        #expect(refused.status != 0 && refused.stderr.contains("hint: stop it first"))
        #expect(try godwit(["delete", "--force", "c1"], dir: dir).status == 0)
        #expect(try godwit(["list", "--format", "json"], dir: dir).stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "[\n\n]"
                || (try godwit(["list", "--format", "json"], dir: dir).stdout.contains("c1") == false))

        let operations = try godwit(["operation", "list"], dir: dir)
        #expect(operations.stdout.contains("Launching container c1") && operations.stdout.contains("Deleting container c1"))
        let images = try godwit(["image", "list"], dir: dir)
        #expect(images.stdout.contains("busybox"))
    }

    @Test func aFailedLaunchLeavesNothingBehind() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let failed = try godwit(["launch", "busybox", "c1", "-c", "environment.GODWIT_FAKE_FAIL=start"], dir: state.path)
        #expect(failed.status != 0)
        #expect(failed.stderr.contains("start of 'c1' failed") && failed.stderr.contains("container: c1"), "\(failed.stderr)")
        #expect(!(try godwit(["list"], dir: state.path).stdout.contains("c1")))
        #expect(!FileManager.default.fileExists(atPath: state.url.appendingPathComponent("containers/c1").path))
    }

    @Test func aRestartedDaemonKeepsItsContainers() throws {
        let state = try StateDir()
        let dir = state.path
        var first: DaemonProcess? = try DaemonProcess(state: state)
        #expect(try godwit(["launch", "busybox", "up"], dir: dir).status == 0)
        #expect(try godwit(["launch", "busybox", "down"], dir: dir).status == 0)
        #expect(try godwit(["stop", "down"], dir: dir).status == 0)
        let before = try APICoding.decoder().decode([ContainerInfo].self,
                                                    from: Data(try godwit(["list", "--format", "json"], dir: dir).stdout.utf8))

        // A second daemon on the same state dir refuses, and leaves the first one working.
        let second = try DaemonProcess(state: state, waitForSocket: false)
        #expect(second.waitForExit() == 1)
        #expect(second.logText.contains("another godwitd (pid \(first!.process.processIdentifier)) is already running"), "\(second.logText)")
        #expect(try godwit(["list"], dir: dir).status == 0)

        // SIGTERM: clean exit, pid file and socket gone, containers untouched.
        #expect(first!.stop() == 0)
        first = nil
        #expect(!FileManager.default.fileExists(atPath: state.url.appendingPathComponent("godwitd.pid").path))
        #expect(try godwit(["list"], dir: dir).stderr.contains("cannot reach godwitd"))

        let restarted = try DaemonProcess(state: state)
        defer { restarted.stop() }
        let after = try APICoding.decoder().decode([ContainerInfo].self,
                                                   from: Data(try godwit(["list", "--format", "json"], dir: dir).stdout.utf8))
        #expect(after == before)
        #expect(after.first { $0.name == "up" }?.status == .running)
        #expect(after.first { $0.name == "down" }?.status == .stopped)
        #expect(try godwit(["stop", "up"], dir: dir).status == 0)
    }
}

@Suite(.serialized) struct DaemonEventTests {
    @Test func monitorStreamsLifecycleEvents() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path
        #expect(try godwit(["launch", "busybox", "c1"], dir: dir).status == 0)

        let output = state.url.appendingPathComponent("monitor.out")
        FileManager.default.createFile(atPath: output.path, contents: nil)
        let monitor = Process()
        monitor.executableURL = URL(fileURLWithPath: Built.path("godwit"))
        monitor.arguments = ["monitor", "--dir", dir, "--type", "lifecycle"]
        monitor.standardOutput = try FileHandle(forWritingTo: output)
        monitor.standardError = FileHandle.nullDevice
        try monitor.run()
        defer { if monitor.isRunning { kill(monitor.processIdentifier, SIGKILL); monitor.waitUntilExit() } }
        func seen() -> String { (try? String(contentsOf: output, encoding: .utf8)) ?? "" }

        // Poke until the monitor shows it is subscribed (its connection races our requests).
        let deadline = Date().addingTimeInterval(15)
        while !seen().contains("container-updated") && Date() < deadline {
            _ = try godwit(["config", "set", "c1", "limits.cpu", "1"], dir: dir)
            usleep(200_000)
        }
        #expect(seen().contains("container-updated"))
        #expect(try godwit(["stop", "c1"], dir: dir).status == 0)
        #expect(try godwit(["delete", "c1"], dir: dir).status == 0)
        let end = Date().addingTimeInterval(10)
        while !seen().contains("container-deleted") && Date() < end { usleep(100_000) }
        let lines = seen().split(separator: "\n")
        let events = try lines.map { try APICoding.decoder().decode(Event.self, from: Data($0.utf8)) }
        #expect(events.allSatisfy { $0.type == .lifecycle })
        let actions = events.compactMap(\.metadata.action)
        #expect(actions.contains("container-stopped") && actions.contains("container-deleted"), "\(actions)")
        #expect(events.last?.metadata.source == "/1.0/containers/c1")

        // The stream ends cleanly when the daemon shuts down.
        #expect(daemon.stop() == 0)
        let gone = Date().addingTimeInterval(10)
        while monitor.isRunning && Date() < gone { usleep(100_000) }
        #expect(!monitor.isRunning)
    }

    @Test func operationsCanBeListedShownAndWaitedFor() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path
        #expect(try godwit(["launch", "busybox", "c1"], dir: dir).status == 0)
        let list = try godwit(["operation", "list", "--format", "json"], dir: dir)
        let operations = try APICoding.decoder().decode([OperationInfo].self, from: Data(list.stdout.utf8))
        let launch = try #require(operations.first)
        #expect(launch.status == .success && launch.description == "Launching container c1")
        #expect(try godwit(["operation", "show", launch.id], dir: dir).stdout.contains("\"class\" : \"task\""))
        #expect(try godwit(["operation", "wait", launch.id], dir: dir).status == 0)
        let cancel = try godwit(["operation", "cancel", launch.id], dir: dir)
        #expect(cancel.status != 0 && cancel.stderr.contains("already finished"))
        let unknown = try godwit(["operation", "show", "nope"], dir: dir)
        #expect(unknown.status != 0 && unknown.stderr.contains("operation 'nope' not found"))
    }
}

@Suite(.serialized) struct DaemonOptionTests {
    @Test func badOptionsAreRefusedClearly() throws {
        let state = try StateDir()
        for (arguments, message) in [
            (["--subnet", "10.0.0.0/24"], "--bridge and --subnet go together"),
            (["--bridge", "br0", "--subnet", "10.0.0.5/24"], "host bits are set"),
            (["--bridge", "br0", "--subnet", "10.0.0.0/24", "--gateway", "nonsense"], "invalid gateway address"),
        ] {
            let daemon = try DaemonProcess(state: state, extraArguments: arguments, waitForSocket: false)
            #expect(daemon.waitForExit() == 1, "\(arguments)")
            #expect(daemon.logText.contains("error: ") && daemon.logText.contains(message), "\(daemon.logText)")
        }
        // The fake driver needs its environment variable too, so it can't be chosen by accident.
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_TESTING_FAKE_DRIVER"] = nil
        let result = try Command.run([Built.path("godwitd"), "--state-dir", state.path, "--testing-fake-driver", "/tmp/x"],
                                     environment: environment)
        #expect(result.status == 1 && result.stderr.contains("--testing-fake-driver is for Godwit's own tests"))
    }

    @Test func imagesImportListAndDelete() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path
        let rootfs = state.url.appendingPathComponent("src")
        try FileManager.default.createDirectory(at: rootfs.appendingPathComponent("sbin"), withIntermediateDirectories: true)
        try Data("#!/bin/sh\n".utf8).write(to: rootfs.appendingPathComponent("sbin/init"))
        let tarball = state.url.appendingPathComponent("img.tar.gz").path
        try Command.check(["tar", "-C", rootfs.path, "-czf", tarball, "."])

        let imported = try godwit(["image", "import", tarball, "--alias", "tiny"], dir: dir)
        #expect(imported.status == 0, "\(imported.stderr)")
        #expect(try godwit(["image", "list"], dir: dir).stdout.contains("tiny"))
        let again = try godwit(["image", "import", tarball, "--alias", "tiny"], dir: dir)
        #expect(again.status != 0 && again.stderr.contains("image alias 'tiny' already exists"))
        let missing = try godwit(["image", "import", "/nonexistent.tar", "--alias", "x"], dir: dir)
        #expect(missing.status != 0 && missing.stderr.contains("no such file"))

        #expect(try godwit(["launch", "tiny", "c1"], dir: dir).status == 0)
        let inUse = try godwit(["image", "delete", "tiny"], dir: dir)
        #expect(inUse.status != 0 && inUse.stderr.contains("image 'tiny' is used by c1"))
        #expect(try godwit(["delete", "--force", "c1"], dir: dir).status == 0)
        #expect(try godwit(["image", "delete", "tiny"], dir: dir).status == 0)
        #expect(!(try godwit(["image", "list"], dir: dir).stdout.contains("tiny")))
    }
}
