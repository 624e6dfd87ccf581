import Foundation
import GodwitCore
import Testing

/// `--https` on a single fake-driver daemon (no lab): what happens without the listener, and
/// when its port is taken.
@Suite struct TrustDaemonTests {
    /// Loopback: no namespace needed. Random so parallel runs on the machine rarely collide.
    static func freePort() -> Int { Int.random(in: 20000...60000) }

    func expectFailure(_ result: CommandResult, mentioning words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status != 0, "exit status of \(result.argv.dropFirst().joined(separator: " "))", sourceLocation: sourceLocation)
        for word in words {
            #expect(result.stderr.contains(word), "stderr lacks '\(word)': \(result.stderr)", sourceLocation: sourceLocation)
        }
    }

    @Test func withoutHTTPSTheTrustVerbsSayHowToEnableIt() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let words = ["no HTTPS listener", "--https ADDRESS:PORT"]
        expectFailure(try godwit(["remote", "add", "h2", "https://10.0.0.1:8443", "--token", "abc"], dir: state.path), mentioning: words)
        expectFailure(try godwit(["remote", "list"], dir: state.path), mentioning: words)
        expectFailure(try godwit(["trust", "add", "h2"], dir: state.path), mentioning: words)
        expectFailure(try godwit(["trust", "list", "--format", "json"], dir: state.path), mentioning: words)
        let info = try godwit(["info", "--format", "json"], dir: state.path)
        #expect(info.succeeded && !info.stdout.contains("certificate_fingerprint"), "\(info.stdout)")
    }

    @Test func aPortInUseFailsStartUpNamingTheAddress() throws {
        let port = Self.freePort()
        let first = try StateDir(), second = try StateDir()
        let listening = try DaemonProcess(state: first, extraArguments: ["--https", "127.0.0.1:\(port)"])
        defer { listening.stop() }
        let info = try godwit(["info", "--format", "json"], dir: first.path)
        #expect(info.stdout.contains("127.0.0.1:\(port)") && info.stdout.contains("certificate_fingerprint"), "\(info.stdout)")
        #expect(try godwit(["trust", "list"], dir: first.path).succeeded)

        let clash = try DaemonProcess(state: second, extraArguments: ["--https", "127.0.0.1:\(port)"], waitForSocket: false)
        defer { clash.stop() }
        let status = clash.waitForExit(timeout: 30)
        #expect(status != nil && status != 0, "the second daemon should exit")
        #expect(clash.logText.contains("127.0.0.1:\(port)") && clash.logText.contains("already in use"), "\(clash.logText)")
        let answered = try godwit(["info"], dir: second.path).succeeded
        #expect(!answered, "a daemon that cannot listen for HTTPS must not serve its socket either")
    }

    @Test func badHTTPSAddressesAreRejected() throws {
        for bad in ["10.0.0.1", "10.0.0.1:0", "fd00::1:8443", ":8443"] {
            let state = try StateDir()
            let daemon = try DaemonProcess(state: state, extraArguments: ["--https", bad], waitForSocket: false)
            let status = daemon.waitForExit(timeout: 30)
            #expect(status != nil && status != 0, "--https \(bad)")
            #expect(daemon.logText.contains("invalid --https address"), "\(bad): \(daemon.logText)")
        }
    }
}
