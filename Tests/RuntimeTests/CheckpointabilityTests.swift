import Foundation
import GodwitCore
import Checkpoint
import Testing
@testable import Runtime

/// Proves the runtime's containers are checkpointable: dump a running one with CRIU by
/// the Checkpoint module's CRIU engine and restore it, and the workload carries on.
@Suite(.serialized)
struct CheckpointabilityTests {
    @Test
    func dumpAndRestoreKeepsTheCounterGoing() throws {
        let lab = try TestLab()
        defer { lab.cleanUp() }
        let counterLoop = "trap 'exit 0' TERM; i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; echo tick $i; sleep 0.1; done"
        let spec = try lab.spec(command: ["/bin/sh", "-c", counterLoop], limits: ResourceLimits(memoryBytes: 128 << 20, pidsMax: 100))
        let original = try lab.runtime.start(spec)
        var current = original
        defer { try? lab.runtime.destroy(current) }
        let counterFile = original.rootfs.path + "/tmp/counter"
        func counter() -> Int { Int(HostEnvironment.read(counterFile) ?? "") ?? 0 }
        #expect(eventually { counter() >= 3 })
        // Something exec'd and left running (own session, leader gone, stdio inside the
        // container) must be dumpable too.
        #expect(try lab.runtime.run(original, ["sh", "-c", "sleep 1000 </dev/null >/dev/null 2>&1 &"]).succeeded)

        let images = lab.directory + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        // CRIU runs in the bridge's namespace: restore creates the veth's host end there.
        var engine = try CRIU.locate()
        engine.launcher = lab.netns.wrap([])
        let dumped = try engine.dump(DumpOptions(pid: original.initPID, imagesDirectory: images))
        #expect((dumped.stats?.pagesWritten ?? 0) > 0, "stats-dump parsed: \(String(describing: dumped.stats))")
        #expect(eventually { !original.initProcess.isAlive })
        let atDump = counter()
        let veth = try #require(original.veth)
        // The old pair dies with the old netns, a moment after the dump killed the tasks.
        #expect(eventually { !veth.exists(in: lab.netns) })

        let pidfile = lab.directory + "/restored.pid"
        var restoreOptions = RestoreOptions(imagesDirectory: images, rootfs: original.rootfs.path, pidFile: pidfile)
        restoreOptions.veths = [VethMapping(containerInterface: "eth0", hostInterface: veth.hostName, bridge: lab.bridge)]
        let (pid, restored) = try engine.restore(restoreOptions)
        #expect(restored.stats?.restoreTime != nil, "stats-restore parsed")
        current = try lab.runtime.adopt(spec: spec, initPID: pid)

        #expect(eventually { counter() > atDump + 2 }, "counter stuck at \(counter()) (dumped at \(atDump))")
        #expect(try lab.runtime.run(current, ["cat", "/proc/1/cmdline"]).stdout.hasPrefix("/bin/sh"))
        #expect(try lab.runtime.run(current, ["sh", "-c", "ps -o args | grep -q '^sleep 1000'"]).succeeded)
        let link = try lab.runtime.run(current, ["ip", "addr", "show", "eth0"]).stdout
        #expect(link.contains("10.77.0.2/24") && link.contains(veth.mac.description), "\(link)")
        #expect(try lab.inNetns(["busybox", "ping", "-c", "1", "-W", "2", "10.77.0.2"]).succeeded)
        for dir in current.cgroup.directories {
            #expect(HostEnvironment.read(dir + "/cgroup.procs")?.split(separator: "\n").contains("\(pid)") == true,
                    "restored init not in \(dir)")
        }
        #expect(current.cgroup.read("pids.max") == "100")
        let console = HostEnvironment.read(current.consoleLog) ?? ""
        #expect(console.contains("tick \(atDump + 1)"), "console continues after restore")

        try lab.runtime.destroy(current)
        #expect(!current.cgroup.exists)
        #expect(!veth.exists(in: lab.netns))
        #expect(mountsMentioning(lab.runtime.directory(for: spec.name)).isEmpty)
    }
}
