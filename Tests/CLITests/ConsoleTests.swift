import Foundation
import GodwitCore
import Testing

/// `godwit console NAME` on real busybox containers (issue 14, docs/console.md): the
/// keeper inside the container holds /dev/console's pty; the CLI attaches over its socket.
/// Driven through pipes from shell scripts, which keep stdin open while the container acts.
@Suite(.serialized) struct ConsoleTests {
    /// Runs a shell script with GODWIT_DIR set and `$G` the CLI.
    private func script(_ lab: RealDaemonFixture, _ text: String) throws -> CommandResult {
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_DIR"] = lab.stateDir
        environment["G"] = Built.path("godwit")
        return try Command.run(["sh", "-c", text], input: "", environment: environment)
    }

    private func launch(_ lab: RealDaemonFixture, _ name: String) throws {
        let result = try lab.godwit(["launch", "busybox", name])
        try #require(result.succeeded, "launch \(name) failed: \(result.stderr)\n\(lab.logText)")
    }

    @Test func attachSeesConsoleOutputSendsInputAndDetachesWithCtrlAQ() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "con")

        // The init's stdio and /dev/console are the console pty.
        let links = try lab.sh("con", "readlink /dev/console; readlink /proc/1/fd/1")
        #expect(links.stdout.contains("pts/") && links.stdout.contains("/dev/pts/"), "\(links)")

        // A reader on /dev/console inside gets what the client types (older input queued on
        // the console may come first, hence the loop).
        let session = try script(lab, """
            $G exec con -- sh -c 'until grep -q typed-42 /tmp/got 2>/dev/null; do head -n1 </dev/console >>/tmp/got; done' &
            reader=$!
            (sleep 1; $G exec con -- sh -c 'echo from-the-container >/dev/console'; printf 'typed-%s\\n' 42; sleep 1; printf '\\001q'; sleep 5) | $G console con
            echo "status=$?"
            wait $reader
            """)
        #expect(session.stdout.contains("from-the-container"), "\(session)")
        #expect(session.stdout.contains("status=0"), "\(session)")
        #expect(session.stderr.contains("Ctrl-a q") && session.stderr.contains("detached"), "\(session)")
        let got = try lab.sh("con", "cat /tmp/got")
        #expect(got.stdout.contains("typed-42"), "\(got)")

        // The log keeps the console's output as text lines.
        let log = try lab.godwit(["console", "--show-log", "con"])
        #expect(log.stdout.contains("started\n") && log.stdout.contains("from-the-container\n"), "\(log)")
        #expect(!log.stdout.contains("\r\n"), "\(log)")

        // One client at a time; Ctrl-a a passes a Ctrl-a through.
        let busy = try script(lab, """
            (printf 'x\\001a'; sleep 3; printf '\\001q') | $G console con >/dev/null 2>&1 &
            sleep 1
            $G console con </dev/null
            echo "second=$?"
            wait
            """)
        #expect(busy.stderr.contains("another client") && !busy.stdout.contains("second=0"), "\(busy)")
        let state = try lab.godwit(["list", "--format", "json"])
        #expect(state.stdout.contains("con") && state.stdout.uppercased().contains("RUNNING"), "\(state)")
    }

    @Test func aCheckpointDropsTheClientAndTheConsoleWorksAfterRestore() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try launch(lab, "cp")

        // Attached (stdin kept open) while the container is checkpointed: the client is told
        // why and dropped, the dump succeeds.
        let stop = try script(lab, """
            (sleep 60) 2>/dev/null | $G console cp >/tmp/gw-console-\(lab.suffix).out 2>&1 &
            client=$!
            sleep 1
            $G stop --stateful cp; echo "stop=$?"
            wait $client; echo "client=$?"
            cat /tmp/gw-console-\(lab.suffix).out; rm -f /tmp/gw-console-\(lab.suffix).out
            """)
        #expect(stop.stdout.contains("stop=0") && stop.stdout.contains("client=0"), "\(stop)\n\(lab.logText)")
        #expect(stop.stdout.contains("being checkpointed"), "\(stop)")

        let start = try lab.godwit(["start", "cp"])
        try #require(start.succeeded, "\(start)\n\(lab.logText)")
        #expect(try lab.sh("cp", "readlink /dev/console").stdout.contains("pts/"))

        // Attaching works again (after the keeper's short refusal window).
        let again = try script(lab, """
            for i in 1 2 3 4 5 6; do
              (sleep 1; $G exec cp -- sh -c 'echo after-restore-$((6*7)) >/dev/console'; sleep 1; printf '\\001q') | $G console cp && break
              sleep 1
            done
            """)
        #expect(again.stdout.contains("after-restore-42"), "\(again)")
        let log = try lab.godwit(["console", "--show-log", "cp"])
        #expect(log.stdout.contains("after-restore-42"), "\(log)")

        // And a second checkpoint with nobody attached still works.
        #expect(try lab.godwit(["stop", "--stateful", "cp"]).succeeded)
        #expect(try lab.godwit(["start", "cp"]).succeeded)
    }

    /// systemd writes to /dev/console and Debian starts console-getty.service on it: the
    /// system still boots to `running`, and the getty's login prompt is on the console.
    @Test func aDebianSystemContainerBootsWithTheConsoleAndItsGettyAnswers() throws {
        let lab = try RealDaemonFixture()
        defer { lab.tearDown() }
        try DebianImage.ensure(dir: lab.stateDir)
        let launched = try lab.godwit(["launch", DebianImage.alias, "deb"])
        try #require(launched.succeeded, "\(launched.stderr)\n\(lab.logText)")
        var state = ""
        _ = poll(timeout: 120) {
            state = ((try? lab.sh("deb", "systemctl is-system-running"))?.stdout ?? "").trimmingCharacters(in: .whitespacesAndNewlines)
            return state == "running" || state == "degraded"
        }
        let failed = try lab.sh("deb", "systemctl list-units --failed --no-legend")
        #expect(state == "running", "\(state): \(failed.stdout)\n\(lab.logText)")
        let getty = try lab.sh("deb", "systemctl is-active console-getty.service")
        #expect(getty.stdout.contains("active"), "\(getty)")

        let session = try script(lab, "(sleep 1; printf '\\n'; sleep 2; printf '\\001q') | $G console deb")
        #expect(session.succeeded && session.stdout.contains("login:"), "\(session)")
    }
}
