import API
import Foundation
import GodwitCore
import Testing

/// Issue 14's interactive access on real busybox containers (RealDaemonFixture: a real
/// godwitd with the runtime driver, in a network namespace, state dir and cgroup of its
/// own; torn down even when a test fails): `exec -t` and `file push/pull`.
@Suite(.serialized) struct InteractiveAccessTests {
    private func launch(_ lab: RealDaemonFixture, _ name: String) throws {
        let result = try lab.godwit(["launch", "busybox", name])
        try #require(result.succeeded, "launch \(name) failed: \(result.stderr)\n\(lab.logText)")
    }

    /// The CLI with GODWIT_DIR set, run by `script` so that its stdin is a terminal.
    private func onTerminal(_ lab: RealDaemonFixture, _ shell: String) throws -> CommandResult {
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_DIR"] = lab.stateDir
        return try Command.run(["script", "-qec", shell, "/dev/null"], input: "", environment: environment)
    }

    @Test func execWithATerminalRunsOnTheContainersOwnPtyAndPassesTheExitCodeThrough() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "tty")

        // Driven through a pipe: the command still has a pty (the container's /dev/pts/N).
        let piped = try lab.godwit(["exec", "-t", "tty", "--", "sh", "-c", "tty; exit 3"])
        #expect(piped.status == 3, "\(piped)")
        #expect(piped.stdout.contains("/dev/pts/"), "\(piped.stdout)")
        // Without -t nothing changes: no terminal.
        let plain = try lab.godwit(["exec", "tty", "--", "sh", "-c", "tty; exit 2"])
        #expect(plain.status == 2 && plain.stdout.contains("not a tty"), "\(plain)")

        // Input reaches the command through the pty; the shell exits with what it was told.
        let shell = try Command.run([Built.path("godwit"), "exec", "-t", "tty", "--", "sh"],
                                    input: "echo typed-$((40+2))\nexit 5\n",
                                    environment: ProcessInfo.processInfo.environment.merging(["GODWIT_DIR": lab.stateDir]) { $1 })
        #expect(shell.status == 5 && shell.stdout.contains("typed-42"), "\(shell)")

        // On a terminal: raw mode, the window size copied to the container's pty, TERM set.
        let godwit = Built.path("godwit")
        let sized = try onTerminal(lab, "stty rows 33 cols 101; \(godwit) exec -t tty -- sh -c 'tty; stty size; echo term=$TERM; exit 4'")
        #expect(sized.status == 4, "\(sized)")
        #expect(sized.stdout.contains("/dev/pts/") && sized.stdout.contains("33 101"), "\(sized.stdout)")
        #expect(!sized.stdout.contains("term=\r") && sized.stdout.contains("term="), "\(sized.stdout)")

        // The pty is the container's: its /dev/pts/N is in the container's devpts instance,
        // which holds nothing but ptmx and the ptys opened inside.
        let inside = try lab.godwit(["exec", "-t", "tty", "--", "sh", "-c", "basename $(tty); ls /dev/pts"])
        let words = inside.stdout.split(whereSeparator: { $0.isWhitespace }).map(String.init)
        #expect(words.count >= 3 && words.dropFirst().contains(words[0]) && words.contains("ptmx"), "\(inside.stdout)")
    }

    @Test func filePushAndPullRoundTripWithModeAndOwnerAndStayInsideTheContainer() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "files")
        let local = lab.root + "/payload"
        let payload = (0..<2000).map { "line \($0)\n" }.joined()
        try payload.write(toFile: local, atomically: true, encoding: .utf8)

        let push = try lab.godwit(["file", "push", local, "files/tmp/payload", "--mode", "0640", "--uid", "1234", "--gid", "99"])
        #expect(push.succeeded, "\(push)")
        let stat = try lab.sh("files", "stat -c '%a %u %g %s' /tmp/payload")
        #expect(stat.stdout == "640 1234 99 \(payload.utf8.count)\n", "\(stat)")

        let back = lab.root + "/back"
        let pull = try lab.godwit(["file", "pull", "files/tmp/payload", back])
        #expect(pull.succeeded, "\(pull)")
        #expect((try? String(contentsOfFile: back, encoding: .utf8)) == payload)
        let toStdout = try lab.godwit(["file", "pull", "files//tmp/payload", "-"])
        #expect(toStdout.stdout == payload)

        // A symlink to / inside the container resolves to the container's root, not the host's.
        let marker = "gw-escape-\(lab.suffix)"
        #expect(try lab.sh("files", "ln -s / /tmp/up && ln -s /etc/\(marker) /tmp/abs").succeeded)
        #expect(try lab.godwit(["file", "push", local, "files/tmp/up/etc/\(marker)"]).succeeded)
        #expect(try lab.godwit(["file", "push", local, "files/tmp/abs"]).succeeded)
        #expect(try lab.godwit(["file", "push", local, "files/../../../../../etc/\(marker)-dots"]).succeeded)
        #expect(access("/etc/" + marker, F_OK) != 0, "push wrote on the host through a symlink")
        #expect(access("/etc/" + marker + "-dots", F_OK) != 0, "push wrote on the host through ..")
        #expect(try lab.sh("files", "ls /etc/\(marker) /etc/\(marker)-dots").succeeded, "the files belong in the container")

        // Bad paths: a clear error and a non-zero exit.
        let absent = try lab.godwit(["file", "pull", "files/no/such/file", back])
        #expect(absent.status != 0 && absent.stderr.contains("no such file"), "\(absent)")
        let directory = try lab.godwit(["file", "pull", "files/etc", back])
        #expect(directory.status != 0 && directory.stderr.contains("is a directory"), "\(directory)")
        let intoDirectory = try lab.godwit(["file", "push", local, "files/etc"])
        #expect(intoDirectory.status != 0 && intoDirectory.stderr.contains("is a directory"), "\(intoDirectory)")
        let long = try lab.godwit(["file", "pull", "files/" + String(repeating: "a/", count: 2100), back])
        #expect(long.status != 0 && long.stderr.contains("too long"), "\(long)")
        let noPath = try lab.godwit(["file", "pull", "files", back])
        #expect(noPath.status != 0 && noPath.stderr.contains("NAME/PATH"), "\(noPath)")
        let badMode = try lab.godwit(["file", "push", local, "files/tmp/x", "--mode", "999"])
        #expect(badMode.status != 0 && badMode.stderr.contains("--mode"), "\(badMode)")
        let missingLocal = try lab.godwit(["file", "push", lab.root + "/absent", "files/tmp/x"])
        #expect(missingLocal.status != 0 && missingLocal.stderr.contains("absent"), "\(missingLocal)")
        let noContainer = try lab.godwit(["file", "pull", "ghost/etc/passwd", back])
        #expect(noContainer.status != 0, "\(noContainer)")
    }
}
