import API
import Foundation
import GodwitCore
import Testing
@testable import Daemon

/// The built-in image must really work as a container root: checked with chroot (root only),
/// which is what the runtime's pivot_root amounts to for these purposes.
@Suite(.serialized) struct BusyboxImageTests {
    func buildImage(extra: [ImageExtraFile] = []) async throws -> (TempDir, URL) {
        let dir = try TempDir("image")
        let images = ImageStore(directory: dir.url, store: try Store(), extraFiles: extra)
        let record = try await images.resolve(BuiltinImage.busybox)
        return (dir, images.rootfs(record))
    }

    @Test func theImageHasAShellUsersAndExtraFiles() async throws {
        let extraSource = try TempDir("extra")
        let program = extraSource.url.appendingPathComponent("memtouch")
        try Data("#!/bin/sh\necho memtouch ran\n".utf8).write(to: program)
        let (dir, rootfs) = try await buildImage(extra: [ImageExtraFile(source: program.path, destination: "usr/bin/memtouch")])
        defer { withExtendedLifetime((dir, extraSource)) {} }
        for path in ["bin/busybox", "sbin/init", "usr/bin/memtouch"] {
            #expect(FileManager.default.isExecutableFile(atPath: rootfs.appendingPathComponent(path).path), "\(path)")
        }
        for path in ["etc/passwd", "etc/group", "etc/hostname", "proc", "sys", "dev", "tmp", "root", "run", "var"] {
            #expect(FileManager.default.fileExists(atPath: rootfs.appendingPathComponent(path).path), "\(path)")
        }
        guard HostEnvironment.isRoot else { return }
        let shell = try Command.run(["chroot", rootfs.path, "/bin/sh", "-c", "id -un; memtouch; ls /bin | wc -l"])
        #expect(shell.succeeded, "\(shell.stderr)")
        let lines = shell.stdout.split(separator: "\n")
        #expect(lines.first == "root")
        #expect(lines.dropFirst().first == "memtouch ran")
        #expect((Int(lines.last?.trimmingCharacters(in: .whitespaces) ?? "") ?? 0) > 50)
    }

    @Test func initRunsWithoutATtyAndStopsOnSIGTERM() async throws {
        guard HostEnvironment.isRoot else { return }
        let (dir, rootfs) = try await buildImage()
        defer { withExtendedLifetime(dir) {} }
        let log = dir.url.appendingPathComponent("init.log").path
        // The init runs in its own session (its orphaned `sleep` too, so one kill of the
        // process group cleans up). perl first unblocks all signals: Foundation's Process
        // passes on the spawning thread's mask and the test runner's threads block SIGTERM;
        // a container runtime must do the same for its init. It also closes inherited fds:
        // Process notices its child's exit through one, which the orphaned `sleep` would
        // otherwise hold open for an hour. `timeout` bounds the whole run.
        let script = """
            setsid chroot \(rootfs.path) /sbin/init >\(log) 2>&1 </dev/null &
            pid=$!
            sleep 0.5
            kill -0 $pid && echo "running"
            kill -TERM $pid
            wait $pid
            echo "status=$?"
            kill -9 -$pid 2>/dev/null
            true
            """
        let result = try Command.run(["timeout", "-s", "KILL", "20", "perl", "-MPOSIX", "-e",
                                      "sigprocmask(SIG_SETMASK, POSIX::SigSet->new) or die; POSIX::close($_) for 3..1023; exec @ARGV or die",
                                      "/bin/sh", "-c", script])
        let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        #expect(result.stdout.contains("running"), "\(result.stdout) \(result.stderr)")
        #expect(result.stdout.contains("status=0"), "\(result.stdout) \(result.stderr)")
        #expect(text.contains("godwit-init:") && text.contains("started"), "\(text)")
        #expect(text.contains("godwit-init: stopping"), "\(text)")
        #expect(text.split(separator: "\n").count <= 3, "the init loop must not spin: \(text.prefix(500))")
    }

    @Test func theFingerprintFollowsTheContents() async throws {
        let (dirA, a) = try await buildImage()
        let (dirB, b) = try await buildImage()
        defer { withExtendedLifetime((dirA, dirB)) {} }
        // Same busybox, same recipe: same fingerprint (the directory name).
        #expect(a.deletingLastPathComponent().lastPathComponent == b.deletingLastPathComponent().lastPathComponent)
        let extraSource = try TempDir("extra")
        let file = extraSource.url.appendingPathComponent("x")
        try Data("x".utf8).write(to: file)
        let (dirC, c) = try await buildImage(extra: [ImageExtraFile(source: file.path, destination: "usr/bin/x")])
        #expect(a.deletingLastPathComponent().lastPathComponent != c.deletingLastPathComponent().lastPathComponent)
        withExtendedLifetime((dirC, extraSource)) {}
    }
}
