import API
import Foundation
import GodwitCore
import Testing

/// Issue 3's acceptance, tried as a user would: the real `godwit` CLI against a real
/// `godwitd` with the runtime driver (godwit-spawn, cgroups, veths, CRIU), each test in a
/// network namespace, state directory and cgroup parent of its own (RealDaemonFixture).
/// Needs root, busybox-static and CRIU (`make setup`).
@Suite(.serialized) struct ContainerAcceptanceTests {
    // MARK: launch, exec, list, ping

    @Test func aLaunchedBusyboxRunsItsInitHasItsAddressAndAnswersPings() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }

        let launch = try lab.godwit(["launch", "busybox", "web"])
        try #require(launch.succeeded, "launch failed: \(launch.stderr)\n\(lab.logText)")

        // pid 1 is the image's init (a #!/bin/sh script, so the kernel runs `/bin/sh /sbin/init`).
        let cmdline = try lab.godwit(["exec", "web", "--", "cat", "/proc/1/cmdline"])
        #expect(cmdline.status == 0, "\(cmdline.stderr)")
        let argv = cmdline.stdout.split(separator: "\0").map(String.init)
        #expect(argv.contains("/sbin/init"), "pid 1 runs \(argv)")

        // exec passes stdout, stderr and the exit code through.
        let echo = try lab.sh("web", "echo out; echo err >&2; exit 7")
        #expect(echo.status == 7 && echo.stdout == "out\n" && echo.stderr.contains("err"), "\(echo)")

        let info = try #require(try lab.container("web"))
        #expect(info.status == .running)
        let ip = try #require(info.ipv4)
        #expect(ip == "10.88.1.1", "the first lease of \(RealDaemonFixture.subnet)")
        #expect(info.pid.map { $0 > 1 } == true, "list shows the init's host pid")
        let table = try lab.godwit(["list"])
        let row = table.stdout.split(separator: "\n").first { $0.hasPrefix("web ") }.map(String.init) ?? ""
        #expect(row.contains("RUNNING") && row.contains(ip), "\(table.stdout)")

        // eth0 has the address and the MAC the daemon recorded.
        let eth0 = try lab.godwit(["exec", "web", "--", "ip", "addr", "show", "eth0"])
        #expect(eth0.stdout.contains("inet \(ip)/24") && eth0.stdout.contains(info.mac), "\(eth0.stdout)")

        // The client (the bridge's namespace) reaches it, and it reaches the client back.
        #expect(try ping(from: lab, ip), "no answer from \(ip)")
        let back = try lab.godwit(["exec", "web", "--", "ping", "-c1", "-W2", RealDaemonFixture.gateway])
        #expect(back.status == 0, "the container can't reach its gateway: \(back.stdout)\(back.stderr)")

        let console = try lab.godwit(["console", "web", "--show-log"])
        #expect(console.status == 0 && console.stdout.contains("godwit-init: web started"), "\(console)")
    }

    // MARK: stateful stop / start: processes and memory

    @Test func aCounterAndAMemoryWriterSurviveStatefulStopAndStart() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "mem")

        // Background jobs with their stdio on the container's /dev/null: CRIU can't dump fds
        // that point outside the container (like exec's pipes).
        let counter = try lab.sh("mem", "i=0; while :; do i=$((i+1)); echo $i > /tmp/counter.new; mv /tmp/counter.new /tmp/counter; sleep 0.1; done </dev/null >/dev/null 2>&1 &")
        #expect(counter.status == 0, "\(counter.stderr)")
        let memtouch = try lab.sh("mem", "memtouch --size 256 --stride 4 --report /tmp/mt.json </dev/null >/dev/null 2>&1 &")
        #expect(memtouch.status == 0, "\(memtouch.stderr)")
        try #require(try waitUntil(60) { try report(lab, "mem")?["ready"] as? Bool == true },
                     "memtouch never reported ready")
        try #require(try waitUntil { try count(lab, "mem").map { $0 >= 20 } == true }, "the counter doesn't count")
        let memtouchPID = try lab.sh("mem", "pidof memtouch").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(!memtouchPID.isEmpty)

        let before = try #require(try count(lab, "mem"))
        let stop = try lab.godwit(["stop", "--stateful", "mem"])
        try #require(stop.succeeded, "stop --stateful failed: \(stop.stderr)\n\(lab.logText)")
        // A lower bound of how long the processes were frozen: from the end of the stop to
        // the start of the start (plus a second so the pause is unmistakable).
        let stoppedAt = Date()
        let stopped = try #require(try lab.container("mem"))
        #expect(stopped.status == .stopped && stopped.stateful && stopped.pid == nil, "\(stopped)")
        #expect(try lab.godwit(["list"]).stdout.contains("STOPPED (stateful)"))
        #expect(lab.cgroupDirectories(of: "mem").allSatisfy { (HostEnvironment.read($0 + "/cgroup.procs") ?? "").isEmpty },
                "processes left after the checkpoint")
        sleep(1)
        let pauseUs = Int(Date().timeIntervalSince(stoppedAt) * 1_000_000)
        let start = try lab.godwit(["start", "mem"])
        try #require(start.succeeded, "start (restore) failed: \(start.stderr)\n\(lab.logText)")
        #expect(try lab.container("mem")?.status == .running)

        // The counter continues from where it was: not reset, and still counting.
        let resumed = try #require(try count(lab, "mem"))
        #expect(resumed >= before, "the counter went from \(before) to \(resumed): restarted instead of restored")
        #expect(try waitUntil { try count(lab, "mem").map { $0 > resumed } == true }, "the counter stopped at \(resumed)")
        #expect(try lab.sh("mem", "pidof memtouch").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == memtouchPID,
                "memtouch is not the same process")

        // memtouch verifies all 256 MiB on SIGUSR1 and reports the pause it lived through.
        let runsBefore = (try report(lab, "mem")?["verification"] as? [String: Any])?["runs"] as? Int ?? 0
        #expect(try lab.sh("mem", "kill -USR1 \(memtouchPID)").status == 0)
        var verification: [String: Any] = [:]
        #expect(try waitUntil(30) {
            verification = try report(lab, "mem")?["verification"] as? [String: Any] ?? [:]
            return (verification["runs"] as? Int ?? 0) > runsBefore
        }, "memtouch did not verify after SIGUSR1")
        #expect(verification["verdict"] as? String == "pass", "memory verification: \(verification)")
        #expect(verification["bad_pages"] as? Int == 0, "\(verification)")
        let final = try #require(try report(lab, "mem"))
        let longestGap = final["longest_gap_us"] as? Int ?? 0
        let monotonicLag = final["monotonic_lag_us"] as? Int ?? -1
        #expect(longestGap >= pauseUs, "longest gap \(longestGap) µs, but the container was stopped for at least \(pauseUs) µs")
        // Without a time namespace CLOCK_MONOTONIC jumps with CLOCK_REALTIME (lag 0); with one,
        // the lag is the pause. Either way it is never negative.
        #expect(monotonicLag >= 0, "monotonic_lag_us \(monotonicLag)")
        #expect(final["phase"] as? String == "running")
    }

    // MARK: stateful stop / start: a TCP connection

    @Test func aTCPConnectionFromTheClientSurvivesStatefulStopAndStart() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "tcp")
        let ip = try #require(try lab.container("tcp")?.ipv4)

        // One connection only (no -k): anything received after the restore came over it.
        // `sleep |` keeps nc's stdin open, so it never half-closes the connection.
        let server = try lab.sh("tcp", "(sleep 100000 | nc -l -p 5000 > /tmp/received) </dev/null >/dev/null 2>&1 &")
        #expect(server.status == 0, "\(server.stderr)")
        let serverPID = try #require(try waitForPID(lab, "tcp", "nc"), "the server never started")

        // The client is a long-lived busybox nc in the bridge's namespace, fed through a pipe.
        let client = try NetcatClient(netnsPath: lab.netnsPath, ip: ip, port: 5000)
        defer { client.stop() }
        try client.send("before")
        #expect(try waitUntil { try lab.sh("tcp", "cat /tmp/received").stdout == "before\n" },
                "the server didn't get the first line")

        let stop = try lab.godwit(["stop", "--stateful", "tcp"])
        try #require(stop.succeeded, "stop --stateful failed: \(stop.stderr)\n\(lab.logText)")
        #expect(client.isConnected, "the client's connection broke at the checkpoint")
        let start = try lab.godwit(["start", "tcp"])
        try #require(start.succeeded, "start (restore) failed: \(start.stderr)\n\(lab.logText)")

        try client.send("after")
        #expect(try waitUntil { try lab.sh("tcp", "cat /tmp/received").stdout == "before\nafter\n" },
                "after the restore the server didn't get the second line on the same connection")
        #expect(client.isConnected, "the client's connection broke after the restore")
        #expect(try lab.sh("tcp", "pidof nc").stdout.trimmingCharacters(in: .whitespacesAndNewlines) == serverPID,
                "the server is not the same process")
    }

    // MARK: daemon restarts

    @Test func containersKeepRunningAcrossADaemonRestartAndAreControllableAgain() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "keep")
        let initPID = try #require(try lab.container("keep")?.pid)
        #expect(try lab.sh("keep", "echo hi > /tmp/mark").status == 0)

        #expect(lab.stopDaemon() == 0, "godwitd didn't shut down cleanly:\n\(lab.logText)")
        #expect(kill(initPID, 0) == 0, "the container died with the daemon")
        try lab.startDaemon()
        #expect(lab.logText.contains("adopted running containers: keep"), "\(lab.logText)")

        let info = try #require(try lab.container("keep"))
        #expect(info.status == .running && info.pid == initPID, "\(info)")
        let mark = try lab.sh("keep", "cat /tmp/mark")
        #expect(mark.status == 0 && mark.stdout == "hi\n", "\(mark)")
        let ip = try #require(info.ipv4)
        #expect(try ping(from: lab, ip), "no answer from \(ip) after the daemon restart")

        let stop = try lab.godwit(["stop", "keep"])
        #expect(stop.status == 0, "\(stop.stderr)\n\(lab.logText)")
        #expect(try lab.container("keep")?.status == .stopped)
        #expect(waitUntil { kill(initPID, 0) != 0 || isZombie(initPID) }, "the init survived the stop")
        let start = try lab.godwit(["start", "keep"])
        #expect(start.status == 0, "\(start.stderr)\n\(lab.logText)")
        #expect(try lab.sh("keep", "cat /tmp/mark").stdout == "hi\n", "the rootfs didn't survive stop/start")
    }

    // MARK: delete leaves nothing

    @Test func deleteLeavesNoCgroupsMountsVethsProcessesOrFiles() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        let plain = try lab.vethHostEnds()
        // Stopped then deleted; deleted --force while running; deleted after a stateful stop.
        for name in ["gone1", "gone2", "gone3"] { try launch(lab, name) }
        var veths: [String: String] = [:]
        var processes: [String: [pid_t]] = [:]
        for name in ["gone1", "gone2", "gone3"] {
            #expect(try lab.sh(name, "sleep 100000 </dev/null >/dev/null 2>&1 &").status == 0)
            // Check the checks: each of these is there before the delete.
            #expect(!lab.cgroupDirectories(of: name).isEmpty)
            #expect(!lab.mounts(of: name).isEmpty)
            #expect(FileManager.default.fileExists(atPath: lab.containersDirectory + "/" + name))
            processes[name] = Cgroup(path: lab.cgroupRoot + "/" + name, layout: lab.cgroupLayout).processes()
            #expect((processes[name]?.count ?? 0) >= 2, "\(name): init and sleep")
        }
        let ends = Set(try lab.vethHostEnds()).subtracting(plain)
        #expect(ends.count == 3, "one veth per container: \(ends)")
        // Which veth is whose: the peer of the container's eth0 (its iflink).
        for name in ["gone1", "gone2", "gone3"] {
            let iflink = try lab.sh(name, "cat /sys/class/net/eth0/iflink").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            let link = try lab.client(["ip", "-o", "link", "show"]).stdout.split(separator: "\n")
                .first { $0.hasPrefix(iflink + ": ") }
            veths[name] = link.flatMap { $0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces).split(separator: "@").first.map(String.init) }
            #expect(veths[name].map { ends.contains($0) } == true, "\(name)'s veth (iflink \(iflink)) not found")
        }

        #expect(try lab.godwit(["stop", "gone1"]).status == 0)
        let refused = try lab.godwit(["delete", "gone2"])
        #expect(refused.status != 0 && refused.stderr.contains("--force"), "\(refused)")
        #expect(try lab.godwit(["stop", "--stateful", "gone3"]).status == 0)

        for (name, verb) in [("gone1", ["delete", "gone1"]), ("gone2", ["delete", "--force", "gone2"]),
                             ("gone3", ["delete", "gone3"])] {
            let delete = try lab.godwit(verb)
            #expect(delete.status == 0, "\(verb): \(delete.stderr)\n\(lab.logText)")
            #expect(try lab.container(name) == nil)
            #expect(lab.cgroupDirectories(of: name).isEmpty, "\(name) left cgroups: \(lab.cgroupDirectories(of: name))")
            #expect(lab.mounts(of: name).isEmpty, "\(name) left mounts: \(lab.mounts(of: name))")
            if let veth = veths[name] {
                #expect(try lab.vethHostEnds().contains(veth) == false, "\(name) left its veth \(veth)")
            }
            let alive = (processes[name] ?? []).filter { kill($0, 0) == 0 && !isZombie($0) }
            #expect(alive.isEmpty, "\(name) left processes \(alive)")
            #expect(!FileManager.default.fileExists(atPath: lab.containersDirectory + "/" + name),
                    "\(name) left \(try? FileManager.default.subpathsOfDirectory(atPath: lab.containersDirectory + "/" + name))")
        }
        #expect(try lab.vethHostEnds().filter { !plain.contains($0) }.isEmpty)
        #expect(try lab.containers().isEmpty)
    }

    // MARK: bad input

    @Test func badInputIsRefusedClearlyAndCreatesNothing() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "c1")
        let c1 = try #require(try lab.container("c1"))
        let veths = try lab.vethHostEnds()

        let unknownImage = try lab.godwit(["launch", "nosuchimage", "c2"])
        #expect(unknownImage.status != 0 && unknownImage.stderr.contains("unknown image 'nosuchimage'")
                && unknownImage.stderr.contains("hint:"), "\(unknownImage)")
        try expectNothingOf("c2", in: lab)

        let duplicate = try lab.godwit(["launch", "busybox", "c1"])
        #expect(duplicate.status != 0 && duplicate.stderr.contains("container 'c1' already exists"), "\(duplicate)")
        #expect(try lab.container("c1") == c1, "the duplicate launch changed c1")
        #expect(try lab.sh("c1", "true").status == 0, "c1 no longer runs")

        let badValue = try lab.godwit(["launch", "busybox", "c3", "-c", "limits.memory=lots"])
        #expect(badValue.status != 0 && badValue.stderr.contains("invalid value 'lots' for limits.memory"), "\(badValue)")
        try expectNothingOf("c3", in: lab)

        for bad in ["Bad_Name", "1st", "-c", "a.b"] {
            let invalid = try lab.godwit(["launch", "busybox", "--", bad])
            #expect(invalid.status != 0 && invalid.stderr.contains("invalid container name '\(bad)'")
                    && invalid.stderr.contains("hint:"), "\(invalid)")
        }

        let unknownKey = try lab.godwit(["launch", "busybox", "c3", "-c", "limits.bogus=1"])
        #expect(unknownKey.status != 0 && unknownKey.stderr.contains("unknown configuration key 'limits.bogus'"),
                "\(unknownKey)")
        try expectNothingOf("c3", in: lab)

        let missing = try lab.godwit(["stop", "nosuch"])
        #expect(missing.status != 0 && missing.stderr.contains("nosuch"), "\(missing)")

        let running = try lab.godwit(["start", "c1"])
        #expect(running.status != 0 && running.stderr.contains("container 'c1' is running")
                && running.stderr.contains("hint:"), "\(running)")
        #expect(try lab.container("c1")?.pid == c1.pid)

        // A launch that fails inside the driver (the image's init can't be executed) is
        // undone: no row, cgroup, veth, mount or file.
        let tarball = lab.root + "/broken.tar"
        let rootfs = lab.root + "/broken-rootfs"
        for dir in ["bin", "sbin", "etc", "tmp"] {
            try FileManager.default.createDirectory(atPath: rootfs + "/" + dir, withIntermediateDirectories: true)
        }
        try FileManager.default.copyItem(atPath: try Command.resolve("busybox"), toPath: rootfs + "/bin/busybox")
        try FileManager.default.createSymbolicLink(atPath: rootfs + "/bin/sh", withDestinationPath: "busybox")
        try Data("not a program\n".utf8).write(to: URL(fileURLWithPath: rootfs + "/sbin/init"))  // mode 0644
        try Command.check(["tar", "-C", rootfs, "-cf", tarball, "."])
        let imported = try lab.godwit(["image", "import", tarball, "--alias", "broken"])
        try #require(imported.succeeded, "\(imported.stderr)")
        let broken = try lab.godwit(["launch", "broken", "c4"])
        #expect(broken.status != 0 && broken.stderr.contains("error:"), "\(broken)")
        try expectNothingOf("c4", in: lab)

        #expect(try lab.vethHostEnds() == veths, "a failed launch left a veth")
        #expect(try lab.containers().map(\.name) == ["c1"])

        // The daemon not running: the CLI says so and how to start it; nothing is created.
        #expect(lab.stopDaemon() == 0, "godwitd didn't shut down cleanly:\n\(lab.logText)")
        let noDaemon = try lab.godwit(["launch", "busybox", "c5"])
        #expect(noDaemon.status != 0 && noDaemon.stderr.contains("cannot reach godwitd")
                && noDaemon.stderr.contains("hint:"), "\(noDaemon)")
        #expect(lab.cgroupDirectories(of: "c5").isEmpty && lab.mounts(of: "c5").isEmpty
                && !FileManager.default.fileExists(atPath: lab.containersDirectory + "/c5"), "c5 left something")
        #expect(try lab.godwit(["list"]).status != 0)
    }

    // MARK: helpers

    private func launch(_ lab: RealDaemonFixture, _ name: String) throws {
        let result = try lab.godwit(["launch", "busybox", name])
        try #require(result.succeeded, "launch \(name) failed: \(result.stderr)\n\(lab.logText)")
        try #require(try lab.container(name)?.status == .running)
    }

    private func expectNothingOf(_ name: String, in lab: RealDaemonFixture,
                                 sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try lab.container(name) == nil, "\(name) is listed", sourceLocation: sourceLocation)
        #expect(lab.cgroupDirectories(of: name).isEmpty, "\(name) left cgroups", sourceLocation: sourceLocation)
        #expect(lab.mounts(of: name).isEmpty, "\(name) left mounts", sourceLocation: sourceLocation)
        #expect(!FileManager.default.fileExists(atPath: lab.containersDirectory + "/" + name),
                "\(name) left files", sourceLocation: sourceLocation)
    }

    /// `busybox ping` from the client; a few tries, since the first may race the neighbour
    /// entry. Fails when none of them gets an answer.
    private func ping(from lab: RealDaemonFixture, _ ip: String) throws -> Bool {
        for _ in 0..<3 {
            if try lab.client(["busybox", "ping", "-c1", "-W2", ip]).succeeded { return true }
        }
        return false
    }

    /// The counter's value, nil while unreadable.
    private func count(_ lab: RealDaemonFixture, _ name: String) throws -> Int? {
        Int(try lab.sh(name, "cat /tmp/counter").stdout.trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// memtouch's last report (it is replaced atomically, so never half-written).
    private func report(_ lab: RealDaemonFixture, _ name: String) throws -> [String: Any]? {
        let text = try lab.sh(name, "cat /tmp/mt.json 2>/dev/null").stdout
        return (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any]
    }

    private func waitForPID(_ lab: RealDaemonFixture, _ name: String, _ program: String) throws -> String? {
        var pid: String?
        _ = try waitUntil {
            pid = try lab.sh(name, "pidof \(program)").stdout.trimmingCharacters(in: .whitespacesAndNewlines)
            return pid?.isEmpty == false
        }
        return pid?.isEmpty == false ? pid : nil
    }
}

private func isZombie(_ pid: pid_t) -> Bool {
    guard let stat = HostEnvironment.read("/proc/\(pid)/stat"), let close = stat.lastIndex(of: ")") else { return false }
    return stat[stat.index(after: close)...].split(separator: " ").first == "Z"
}
