import API
import Foundation
import GodwitCore
import Testing

/// Failures during a move: the container keeps running on the source and nothing of it
/// stays on the destination; secrets can't be replayed.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct MoveRollbackTests {
    /// What a container left on a host: its row, processes, mounts, files.
    func expectNothing(of name: String, on host: String, in lab: MoveLab, sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(try lab.container(host, name) == nil, "\(name) is listed on \(host)", sourceLocation: sourceLocation)
        #expect(lab.processes(host, name).isEmpty, "processes of \(name) on \(host)", sourceLocation: sourceLocation)
        #expect(lab.mounts(host, name).isEmpty, "mounts of \(name) on \(host): \(lab.mounts(host, name))", sourceLocation: sourceLocation)
        let directory = lab.stateDirectory(host) + "/containers/" + name
        #expect(!FileManager.default.fileExists(atPath: directory), "\(directory) is left", sourceLocation: sourceLocation)
    }

    /// Starts `godwit move` in the background; returns the process and a pipe with its stderr.
    func startMove(_ lab: MoveLab, _ arguments: [String]) throws -> (Process, Pipe) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: LabCLITests.godwit)
        process.arguments = ["move", "--dir", "\(lab.name)/h1"] + arguments
        process.environment = lab.environment
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        return (process, errors)
    }

    @Test func killingTheDestinationDaemonMidTransferLeavesTheContainerOnTheSource() throws {
        // A slow link, so the memory transfer takes seconds and the kill lands inside it.
        let lab = try MoveLab(bandwidth: "100mbit")
        defer { lab.tearDown() }
        // A late rollback (the memory was being served): the TCP connection established
        // before the freeze must carry on (CRIUNetworkLock.releaseRepairedSockets).
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 96)
        defer { workload.stop() }
        let (move, errors) = try startMove(lab, ["web", "h2:", "--mode", "stop-and-copy"])
        // The images have arrived (the container is frozen; the memory comes next).
        let migrations = lab.stateDirectory("h2") + "/migrations"
        let fetching = waitUntil(60) {
            let ids = (try? FileManager.default.contentsOfDirectory(atPath: migrations)) ?? []
            return ids.contains { FileManager.default.fileExists(atPath: migrations + "/" + $0 + "/images/inventory.img") }
        }
        try #require(fetching, "the destination never started fetching memory")
        let argv = try lab.killDaemon("h2")
        move.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(move.terminationStatus != 0, "the move succeeded although the destination died")
        #expect(stderr.contains("rolled back"), "\(stderr)")

        let info = try #require(try lab.container("h1", "web"))
        #expect(info.status == .running)
        try workload.expectHealthy(on: "h1")
        try workload.send("after-the-rollback")
        let ip = try #require(info.ipv4)
        #expect(try Command.run(["nsenter", "--net=" + lab.clientNetnsPath, "busybox", "ping", "-c", "1", "-W", "2", ip]).succeeded,
                "the container is unreachable after the rollback")
        try lab.startDaemon("h2", argv: argv)
        try expectNothing(of: "web", on: "h2", in: lab)
    }

    /// The source daemon dies while CRIU holds the container frozen and before anyone
    /// connected to its page server (which would hold it frozen for ever). The next daemon
    /// finds the move's journal: it ends the old CRIU, thaws the container and has the
    /// destination drop its copy.
    @Test func aSourceDaemonKilledWhileFrozenThawsTheContainerAtRestart() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 32, tcp: false)
        defer { workload.stop() }
        // The fault: the source's engine stops for a minute once the container is frozen.
        let argv = try lab.killDaemon("h1")
        try lab.startDaemon("h1", argv: ["env", "GODWIT_FAULT=pause:frozen:60"] + argv)
        let (move, _) = try startMove(lab, ["web", "h2:", "--mode", "stop-and-copy"])
        let journal = lab.stateDirectory("h1") + "/containers/web/move-journal.json"
        try #require(waitUntil(60) { FileManager.default.fileExists(atPath: journal) }, "the move never froze the container")
        // CRIU freezes and starts its page server; the engine then sits in the fault.
        try #require(waitUntil(30) {
            let pids = lab.processes("h1", "web")
            return !pids.isEmpty && pids.allSatisfy { pid in
                let state = HostEnvironment.read("/proc/\(pid)/stat")?.split(separator: ")").last?.split(separator: " ").first
                return state == "t" || state == "T" || state == "D"
            } || HostEnvironment.read("/sys/fs/cgroup/freezer/godwit-\(lab.name)-h1/web/freezer.state") == "FROZEN"
        }, "the container never stopped")
        _ = try lab.killDaemon("h1")
        move.waitUntilExit()
        #expect(move.terminationStatus != 0)
        try lab.startDaemon("h1", argv: argv)

        #expect(waitUntil(30) { !FileManager.default.fileExists(atPath: journal) }, "the journal was not resolved")
        let info = try #require(try lab.container("h1", "web"))
        #expect(info.status == .running)
        try workload.expectHealthy(on: "h1")
        #expect(waitUntil(30) { (try? lab.container("h2", "web")) == nil }, "the destination kept its copy")
        try expectNothing(of: "web", on: "h2", in: lab)
        let history = try lab.on("h1", ["info"], ["web"])
        #expect(history.succeeded)
    }

    /// The destination daemon dies while a post-copy container runs there with pages still
    /// on the source: its page server died with it, so the kernel would hand the container
    /// zero pages. The next daemon kills it and says it is lost: never silently corrupted.
    @Test func aDestinationDaemonKilledDuringPostCopyNeverLeavesItRunningOnMissingPages() throws {
        let lab = try MoveLab(bandwidth: "20mbit")
        defer { lab.tearDown() }
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 64, tcp: false)
        defer { workload.stop() }
        let (move, errors) = try startMove(lab, ["web", "h2:", "--mode", "post-copy"])
        // Committed: the container runs on h2 while its memory streams in (about 25 s).
        let pending = lab.stateDirectory("h2") + "/containers/web/pages-pending"
        // Committed on both sides: h2 runs it (the mark is written just before), so the
        // kill doesn't land on the commit's answer (which the source would retry for minutes).
        try #require(waitUntil(60) {
            FileManager.default.fileExists(atPath: pending) && (try? lab.container("h2", "web"))??.status == .running
        }, "the move never committed")
        Thread.sleep(forTimeInterval: 0.5)
        let argv = try lab.killDaemon("h2")
        move.waitUntilExit()
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(move.terminationStatus != 0, "a move whose destination died mid-fetch can't have succeeded")
        #expect(stderr.contains("lost"), "\(stderr)")
        try lab.startDaemon("h2", argv: argv)
        let info = try #require(try lab.container("h2", "web"))
        #expect(info.status == .stopped, "it must not run on missing pages")
        #expect(lab.processes("h2", "web").isEmpty)
        #expect(!FileManager.default.fileExists(atPath: pending))
        #expect(try lab.container("h1", "web") == nil || lab.processes("h1", "web").isEmpty, "the source never runs it again")
    }

    @Test func aFailedRestoreOnTheDestinationRollsBackWithCRIUsReason() throws {
        let lab = try MoveLab()
        defer { lab.tearDown() }
        // The destination's CRIU fails every restore, as a real one does when the host
        // can't recreate something; everything else passes through to the real CRIU.
        let criu = try #require(try Command.run(["bash", "-c", "ls \(FileManager.default.currentDirectoryPath)/.criu/bin/criu 2>/dev/null || command -v criu"])
            .stdout.split(separator: "\n").first.map(String.init), "no CRIU found")
        let wrapper = lab.stateRoot + "/criu-failing-restore"
        try FileManager.default.createDirectory(atPath: lab.stateRoot, withIntermediateDirectories: true)
        try """
            #!/bin/bash
            if [ "$1" = restore ]; then
                dir=.; while [ $# -gt 0 ]; do [ "$1" = -D ] && dir=$2; shift; done
                echo "Error (criu/cr-restore.c:1): injected failure for the rollback test" > "$dir/restore.log"
                exit 1
            fi
            exec \(criu) "$@"

            """.write(toFile: wrapper, atomically: true, encoding: .utf8)
        chmod(wrapper, 0o755)
        try lab.restartDaemon("h2", extra: ["--criu", wrapper])

        // A failure this late (the memory already served) fails CRIU's lazy page phase,
        // after which CRIU 4.2.1 resumes the tasks without unlocking the network: the TCP
        // connection established before the freeze must still carry on.
        let workload = try MoveTests.Workload(lab: lab, name: "web", host: "h1", memoryMiB: 32)
        defer { workload.stop() }
        for mode in ["stop-and-copy", "post-copy"] {
            let result = try lab.on("h1", ["move"], ["web", "h2:", "--mode", mode])
            #expect(!result.succeeded, "\(mode): the move succeeded")
            #expect(result.stderr.contains("injected failure"), "\(mode): CRIU's line is not in the error: \(result.stderr)")
            #expect(result.stderr.contains("rolled back"), "\(mode): \(result.stderr)")
            #expect(try lab.container("h1", "web")?.status == .running)
            try workload.expectHealthy(on: "h1")
            try workload.send("after-\(mode)")
            try expectNothing(of: "web", on: "h2", in: lab)
            // The network works: the lab client reaches the container (CRIU's lock is gone).
            let ip = try #require(try lab.container("h1", "web")?.ipv4)
            #expect(try Command.run(["nsenter", "--net=" + lab.clientNetnsPath, "busybox", "ping", "-c", "1", "-W", "2", ip]).succeeded,
                    "\(mode): the container is unreachable after the rollback")
            // The history keeps the failure.
            let info = try lab.on("h1", ["info"], ["web"])
            #expect(info.stdout.contains("rolled-back"), "\(info.stdout)")
        }
    }

    @Test func aMigrationSecretWorksOnlyForItsOwnMigrationAndNotAfterIt() throws {
        // h3 is trusted by h2 too, but the migration is h1's.
        let lab = try MoveLab(hosts: 3)
        defer { lab.tearDown() }
        let h1 = lab.stateDirectory("h1")
        let h3 = lab.stateDirectory("h3")
        let h2Address = try #require(try lab.on("h2", ["info"], ["--format", "json"]).stdout
            .components(separatedBy: "\"https_address\"").dropFirst().first?
            .split(separator: "\"").dropFirst().first.map(String.init))
        let netns = "/run/netns/godwit-\(lab.name)-h1"
        func curl(_ method: String, _ path: String, _ body: String? = nil, as host: String? = nil) throws -> String {
            let me = host ?? h1
            var argv = ["nsenter", "--net=" + netns, "curl", "-sS", "--max-time", "20", "--insecure",
                        "--cert", me + "/server.crt", "--key", me + "/server.key", "-X", method]
            if let body { argv += ["-H", "Content-Type: application/json", "--data", body] }
            return try Command.run(argv + ["https://\(h2Address)\(path)"]).stdout
        }
        /// Opens a data channel as h1 (its certificate) and returns the listener's answer line.
        /// s_client exits when its input ends (-no_ign_eof), after the answer had time to come;
        /// SIGKILL bounds it in any case (it may inherit a blocked SIGTERM from us).
        func openChannel(port: Int, migration: String, secret: String) throws -> String {
            let header = "{\"migration\":\"\(migration)\",\"secret\":\"\(secret)\",\"channel\":\"images\"}"
            let host = h2Address.split(separator: ":").first.map(String.init) ?? ""
            let script = "(printf '%s\\n' '\(header)'; sleep 2) | timeout -s KILL 10 nsenter --net=\(netns) openssl s_client -quiet -no_ign_eof "
                + "-connect \(host):\(port) -cert \(h1)/server.crt -key \(h1)/server.key 2>/dev/null"
            return try Command.run(["bash", "-c", script]).stdout
        }
        // A migration as the source would begin it.
        let begin = try curl("POST", "/1.0/migrations", """
            {"name":"ghost","image":"busybox","imageFingerprint":"","config":{},"mac":"02:00:00:00:00:01",
             "mode":"stop-and-copy","sourceHost":"h1"}
            """)
        let answer = try #require(try? JSONSerialization.jsonObject(with: Data(begin.utf8)) as? [String: Any], "\(begin)")
        let metadata = try #require(answer["metadata"] as? [String: Any], "\(begin)")
        let id = try #require(metadata["id"] as? String), secret = try #require(metadata["secret"] as? String)
        let port = try #require(metadata["streamPort"] as? Int ?? metadata["stream_port"] as? Int, "\(metadata)")
        #expect(try lab.container("h2", "ghost")?.status == .creating)

        // Its secret opens its channels; a wrong one doesn't; another migration's id doesn't.
        #expect(try openChannel(port: port, migration: id, secret: secret).contains("\"ok\""))
        #expect(try openChannel(port: port, migration: id, secret: "AAAA" + secret.dropFirst(4)).contains("refused"))
        #expect(try openChannel(port: port, migration: "another", secret: secret).contains("refused"))

        // Another trusted host can't read, restore, commit or abort h1's migration, nor file
        // a report of a move it did not make.
        for (method, path) in [("GET", "/1.0/migrations/\(id)"), ("POST", "/1.0/migrations/\(id)/restore"),
                               ("POST", "/1.0/migrations/\(id)/commit"), ("DELETE", "/1.0/migrations/\(id)")] {
            let answer = try curl(method, path, as: h3)
            #expect(answer.contains("belongs to another host"), "\(method) \(path) as h3: \(answer)")
        }
        let report = try curl("POST", "/1.0/migrations/reports", """
            {"container":"ghost","newName":"ghost","source":"h3","destination":"h2","mode":"stop-and-copy","modeReason":"",
             "outcome":"moved","startedAt":"2026-12-05T00:00:00Z","totalMillis":0,"phases":[]}
            """, as: h3)
        #expect(report.contains("no move of 'ghost'"), "\(report)")
        #expect(try lab.container("h2", "ghost")?.status == .creating, "h3's calls changed nothing")

        // The migration ends (the source aborts): the recorded secret is worthless now.
        _ = try curl("DELETE", "/1.0/migrations/\(id)")
        let replay = try openChannel(port: port, migration: id, secret: secret)
        #expect(replay.contains("refused") && !replay.contains("\"ok\""), "replayed secret: \(replay)")
        try expectNothing(of: "ghost", on: "h2", in: lab)
    }
}
