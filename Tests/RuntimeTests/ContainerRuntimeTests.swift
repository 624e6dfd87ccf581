import Foundation
import GodwitCore
import Testing
@testable import Runtime

/// Real containers: root, namespaces, cgroups, veths. Serialized to keep the load (and
/// any failure's output) readable; each test has its own lab anyway.
@Suite(.serialized)
struct ContainerRuntimeTests {
    @Test func initIsPidOneSessionLeaderAndExecWorks() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let container = try lab.runtime.start(try lab.spec())
        defer { try? lab.runtime.destroy(container) }

        let cmdline = try lab.runtime.run(container, ["cat", "/proc/1/cmdline"])
        #expect(cmdline.succeeded)
        #expect(cmdline.stdout.split(separator: "\0").first == "/bin/sh")
        // Field 6 of /proc/1/stat is the session id: init leads its own session.
        let stat = try lab.runtime.run(container, ["cat", "/proc/1/stat"]).stdout
        #expect(stat.split(separator: " ")[5] == "1")
        #expect(try lab.runtime.run(container, ["hostname"]).stdout == "ct\n")
        #expect(try lab.runtime.run(container, ["sh", "-c", "exit 42"]).status == 42)
        #expect(try lab.runtime.run(container, ["sh", "-c", "kill -9 $$"]).status == 128 + 9)
        #expect(try lab.runtime.run(container, ["cat"], input: "through stdin\n").stdout == "through stdin\n")
        #expect(try lab.runtime.run(container, ["sh", "-c", "echo $HOME"]).stdout == "/root\n")
        // Only what godwit-spawn opened itself: /dev/null and the console log.
        let fds = try lab.runtime.run(container, ["ls", "/proc/1/fd"]).stdout.split(separator: "\n")
        #expect(fds == ["0", "1", "2"])
        let mounts = try lab.runtime.run(container, ["cat", "/proc/mounts"]).stdout
        for mountPoint in ["/proc", "/sys", "/dev", "/dev/pts", "/dev/shm"] {
            #expect(mounts.contains(" \(mountPoint) "), "missing \(mountPoint) in \(mounts)")
        }
        #expect(!mounts.contains("oldroot"))
        #expect(try lab.runtime.run(container, ["sh", "-c", "echo x > /dev/null && head -c 4 /dev/urandom | wc -c"]).stdout
                .trimmingCharacters(in: .whitespacesAndNewlines) == "4")
    }

    @Test func execPassesFileHandlesThrough() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let container = try lab.runtime.start(try lab.spec())
        defer { try? lab.runtime.destroy(container) }

        let input = Pipe(), output = Pipe()
        input.fileHandleForWriting.write(Data("a\nb\nc\n".utf8))
        try input.fileHandleForWriting.close()
        let status = try lab.runtime.exec(container, ["wc", "-l"], stdin: input.fileHandleForReading,
                                          stdout: output.fileHandleForWriting, stderr: FileHandle.standardError)
        try output.fileHandleForWriting.close()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(status == 0)
        #expect(text.trimmingCharacters(in: .whitespacesAndNewlines) == "3")
    }

    @Test func eth0HasAddressMacAndRoute() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let spec = try lab.spec()
        let container = try lab.runtime.start(spec)
        defer { try? lab.runtime.destroy(container) }

        let mac = MACAddress.derived(from: spec.name)
        let link = try lab.runtime.run(container, ["ip", "addr", "show", "eth0"]).stdout
        #expect(link.contains("inet 10.77.0.2/24"), "\(link)")
        #expect(link.contains("link/ether \(mac)"), "\(link)")
        #expect(try lab.runtime.run(container, ["ip", "route"]).stdout.contains("default via 10.77.0.1"))
        let ping = try lab.inNetns(["busybox", "ping", "-c", "1", "-W", "2", "10.77.0.2"])
        #expect(ping.succeeded, "\(ping.stdout)\(ping.stderr)")
        #expect(try lab.runtime.run(container, ["ping", "-c", "1", "-W", "2", TestLab.gateway]).succeeded)
        let host = try lab.inNetns(["ip", "-o", "link", "show", "dev", container.veth!.hostName]).stdout
        #expect(host.contains("master \(lab.bridge)"), "\(host)")
    }

    @Test func cgroupLimitsApplyAndCgroupNamespaceIsRooted() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let limits = ResourceLimits(memoryBytes: 64 << 20, pidsMax: 50, cpuQuota: 0.5)
        let container = try lab.runtime.start(try lab.spec(limits: limits))
        defer { try? lab.runtime.destroy(container) }

        let memory = container.cgroup.read("memory.limit_in_bytes") ?? container.cgroup.read("memory.max")
        #expect(memory == String(64 << 20))
        #expect(container.cgroup.read("pids.max") == "50")
        if let quota = container.cgroup.read("cpu.cfs_quota_us") {
            #expect(quota == "50000")
        } else {
            #expect(container.cgroup.read("cpu.max") == "50000 100000")
        }
        #expect(container.cgroup.processes().contains(container.initPID))
        let hostView = HostEnvironment.read("/proc/\(container.initPID)/cgroup") ?? ""
        #expect(hostView.contains(container.cgroup.path))
        // Inside, its own cgroup is the root of every hierarchy it joined.
        let inside = try lab.runtime.run(container, ["cat", "/proc/1/cgroup"]).stdout
        for line in inside.split(separator: "\n") where line.contains("memory") || line.contains("pids") {
            #expect(line.hasSuffix(":/"), "\(inside)")
        }
        // The pid limit bites: 60 background sleeps can't all start under pids.max=50.
        _ = try lab.runtime.run(container, ["sh", "-c", "exec >/dev/null 2>&1; for i in $(seq 60); do sleep 30 & done; true"])
        let current = Int(container.cgroup.read("pids.current") ?? "") ?? 0
        #expect(current > 1 && current <= 50)
        let refused = container.cgroup.read("pids.events")?.split(separator: "\n")
            .first { $0.hasPrefix("max ") }.flatMap { Int($0.dropFirst(4)) } ?? 0
        #expect(refused > 0)
    }

    @Test func stopAndDestroyLeaveNothingBehind() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let container = try lab.runtime.start(try lab.spec())
        defer { try? lab.runtime.destroy(container) }
        // An exec'd process left running in the background must go too.
        _ = try lab.runtime.run(container, ["sh", "-c", "sleep 1000 >/dev/null 2>&1 &"])
        #expect(container.cgroup.processes().count >= 2)

        let started = Date()
        try lab.runtime.stop(container, timeout: 5)
        #expect(Date().timeIntervalSince(started) < 4, "init should have obeyed SIGTERM")
        #expect(!container.initProcess.isAlive)
        #expect(container.cgroup.processes().isEmpty)

        try lab.runtime.destroy(container)
        for dir in container.cgroup.directories { #expect(!FileManager.default.fileExists(atPath: dir), "\(dir)") }
        #expect(!container.veth!.exists(in: lab.netns))
        #expect(mountsMentioning(lab.runtime.directory(for: container.name)).isEmpty)
        #expect(!FileManager.default.fileExists(atPath: lab.runtime.directory(for: container.name)))
        #expect(throws: GodwitError.self) { try lab.runtime.adopt(name: container.name) }
    }

    @Test func destroyKillsAContainerThatIgnoresSigterm() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let spec = try lab.spec(command: ["/bin/sh", "-c", "trap '' TERM; while true; do sleep 0.2; done"])
        let container = try lab.runtime.start(spec)
        defer { try? lab.runtime.destroy(container) }
        let started = Date()
        try lab.runtime.stop(container, timeout: 0.5)
        #expect(Date().timeIntervalSince(started) < 3)
        #expect(!container.initProcess.isAlive)
        try lab.runtime.destroy(container)
        #expect(!container.cgroup.exists)
    }

    @Test func freezeStopsTheWorkloadAndThawResumesIt() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let loop = "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.05; done"
        let container = try lab.runtime.start(try lab.spec(command: ["/bin/sh", "-c", loop]))
        defer { try? lab.runtime.destroy(container) }
        func counter() -> Int { Int(HostEnvironment.read(container.rootfs.path + "/tmp/counter") ?? "") ?? 0 }
        #expect(eventually { counter() > 2 })

        try container.cgroup.freeze()
        let frozenAt = counter()
        usleep(400_000)
        #expect(counter() == frozenAt)
        try container.cgroup.thaw()
        #expect(eventually { counter() > frozenAt + 2 })
        // A frozen container can still be stopped: the cgroup kill reaches frozen tasks.
        try container.cgroup.freeze()
        try lab.runtime.stop(container, timeout: 0.2)
        #expect(!container.initProcess.isAlive)
    }

    @Test func copiedRootfsWorksAndIsRemoved() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        var configuration = lab.runtime.configuration
        configuration.rootfsKind = .copy
        let runtime = try ContainerRuntime(configuration)
        let container = try runtime.start(try lab.spec())
        defer { try? runtime.destroy(container) }
        #expect(mountsMentioning(container.rootfs.path).isEmpty)
        #expect(try runtime.run(container, ["sh", "-c", "echo hi > /root/file"]).succeeded)
        #expect(HostEnvironment.read(container.rootfs.path + "/root/file") == "hi")
        #expect(!FileManager.default.fileExists(atPath: lab.image + "/root/file"))
        try runtime.destroy(container)
        #expect(!FileManager.default.fileExists(atPath: runtime.directory(for: container.name)))
    }

    @Test func adoptionAfterDaemonRestartChecksTheProcess() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let container = try lab.runtime.start(try lab.spec())
        defer { try? lab.runtime.destroy(container) }

        let restarted = try ContainerRuntime(lab.runtime.configuration)
        let adopted = try restarted.adopt(name: container.name)
        #expect(adopted.initProcess == container.initProcess)
        #expect(try restarted.run(adopted, ["true"]).succeeded)
        #expect(throws: GodwitError.self) { try restarted.start(try lab.spec()) }

        try restarted.stop(adopted, timeout: 5)
        #expect(throws: GodwitError.self) { try restarted.adopt(name: container.name) }
        try restarted.destroy(name: container.name)
        #expect(!container.cgroup.exists)
    }

    @Test func restartAfterStopKeepsTheRootfs() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let spec = try lab.spec()
        var container = try lab.runtime.start(spec)
        defer { try? lab.runtime.destroy(container) }
        #expect(try lab.runtime.run(container, ["sh", "-c", "echo kept > /root/file"]).succeeded)
        try lab.runtime.stop(container, timeout: 5)

        container = try lab.runtime.start(spec)
        #expect(try lab.runtime.run(container, ["cat", "/root/file"]).stdout == "kept\n")
        #expect(try lab.inNetns(["busybox", "ping", "-c", "1", "-W", "2", "10.77.0.2"]).succeeded)
    }

    @Test func failedStartCleansUp() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let spec = try lab.spec(command: ["/no/such/init"])
        #expect(throws: GodwitError.self) { try lab.runtime.start(spec) }
        #expect(!lab.runtime.cgroup(for: spec.name).exists)
        #expect(!Veth(containerName: spec.name).exists(in: lab.netns))
        #expect(mountsMentioning(lab.runtime.directory(for: spec.name)).isEmpty)

        var missingBridge = try lab.spec("nobr")
        missingBridge.network?.bridge = "gwnone" + lab.suffix.prefix(6)
        #expect(throws: GodwitError.self) { try lab.runtime.start(missingBridge) }
        #expect(!lab.runtime.cgroup(for: missingBridge.name).exists)
    }
}
