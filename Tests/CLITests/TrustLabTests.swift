import Foundation
import GodwitCore
import Testing

/// Remotes and trust on a real lab: `lab up` starts every daemon with `--https` and makes the
/// hosts trust each other through the daemons' API; then the CLI verbs and the HTTPS
/// listener are checked from inside the hosts' network namespaces (curl plays the peers
/// whose certificates we control). One lab for the whole story, removed in a defer.
@Suite(.serialized, .enabled(if: geteuid() == 0, "needs root"))
struct TrustLabTests {
    let stateRoot = "/tmp/gw-trust-" + UUID().uuidString.prefix(8)
    let name = LabCLITests.uniqueName()

    struct Host {
        let name: String, netns: String, address: String, stateDirectory: String
        var dir: String { stateDirectory }
        var certificate: String { stateDirectory + "/server.crt" }
        var key: String { stateDirectory + "/server.key" }
        var url: String { "https://\(address):8443" }
    }

    func godwit(_ arguments: String...) throws -> CommandResult {
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_LAB_ROOT"] = stateRoot
        return try Command.run([LabCLITests.godwit] + arguments, environment: environment)
    }

    func json(_ result: CommandResult, sourceLocation: SourceLocation = #_sourceLocation) throws -> Any {
        try #require(result.status == 0, "\(result.argv.dropFirst().joined(separator: " ")): \(result.stderr)",
                     sourceLocation: sourceLocation)
        return try JSONSerialization.jsonObject(with: Data(result.stdout.utf8))
    }

    func expectFailure(_ result: CommandResult, mentioning words: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status != 0, "exit status of \(result.argv.dropFirst().joined(separator: " "))", sourceLocation: sourceLocation)
        for word in words {
            #expect(result.stderr.contains(word), "stderr lacks '\(word)': \(result.stderr)", sourceLocation: sourceLocation)
        }
    }

    /// An HTTPS request from inside `from`'s namespace; returns (HTTP status, body).
    func curl(from: Host, _ url: String, certificate: String?, key: String?) throws -> (status: Int, body: String) {
        var argv = ["ip", "netns", "exec", from.netns, "curl", "-sS", "--max-time", "20",
                    // The peers are addressed by IP and pinned by certificate, not by a CA.
                    "--insecure", "-w", "\n%{http_code}"]
        if let certificate, let key { argv += ["--cert", certificate, "--key", key] }
        let result = try Command.run(argv + [url])
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? -1, lines.dropLast().joined(separator: "\n"))
    }

    func fingerprint(_ host: Host) throws -> String {
        let info = try json(try godwit("info", "--dir", host.dir, "--format", "json")) as? [String: Any]
        return try #require(info?["certificate_fingerprint"] as? String)
    }

    @Test func labHostsTrustEachOther() throws {
        defer {
            _ = try? godwit("lab", "down", "--name", name)
            try? FileManager.default.removeItem(atPath: stateRoot)
        }
        let up = try godwit("lab", "up", "--name", name, "--hosts", "2")
        try #require(up.status == 0, "\(up.stderr)")
        let status = try json(try godwit("lab", "status", "--name", name, "--format", "json")) as? [String: Any]
        let hosts = try #require(status?["hosts"] as? [[String: Any]]).map { host -> Host in
            let endpoint = host["endpoint"] as? [String: Any] ?? [:]
            return Host(name: endpoint["name"] as? String ?? "", netns: endpoint["netns"] as? String ?? "",
                        address: endpoint["address"] as? String ?? "", stateDirectory: host["stateDirectory"] as? String ?? "")
        }
        try #require(hosts.count == 2)
        let (h1, h2) = (hosts[0], hosts[1])
        let fingerprints = [h1.name: try fingerprint(h1), h2.name: try fingerprint(h2)]

        // Each host has the other as a remote, pinned to its certificate, and trusts it back.
        for (me, other) in [(h1, h2), (h2, h1)] {
            let remotes = try json(try godwit("remote", "list", "--dir", me.dir, "--format", "json")) as? [[String: Any]]
            #expect(remotes?.map { $0["name"] as? String } == [other.name])
            #expect(remotes?.first?["fingerprint"] as? String == fingerprints[other.name])
            #expect(remotes?.first?["url"] as? String == other.url)
            let trusted = try json(try godwit("trust", "list", "--dir", me.dir, "--format", "json")) as? [[String: Any]]
            #expect(trusted?.map { $0["name"] as? String } == [other.name])
            #expect(trusted?.first?["fingerprint"] as? String == fingerprints[other.name])
            #expect(trusted?.first?["kind"] as? String == "client")
        }
        #expect(try godwit("lab", "status", "--name", name).stdout.contains("remotes: \(h2.name)"))

        // The daemon's own mutual-TLS client (PeerClient with the pin) reaches the other daemon.
        let asked = try json(try godwit("remote", "info", h2.name, "--dir", h1.dir, "--format", "json")) as? [String: Any]
        #expect(asked?["fingerprint"] as? String == fingerprints[h2.name])
        #expect(asked?["name"] as? String == h2.name)
        #expect(asked?["client"] as? String == h1.name)

        // GET /1.0 with h1's identity, from h1's namespace: trusted.
        let own = try curl(from: h1, h2.url + "/1.0", certificate: h1.certificate, key: h1.key)
        #expect(own.status == 200, "\(own.body)")
        #expect(own.body.contains(fingerprints[h2.name]!))

        // A stranger's certificate (and no certificate) is refused before any route: an
        // unknown path answers 403, not 404.
        let scratch = stateRoot + "/stranger"
        try FileManager.default.createDirectory(atPath: scratch, withIntermediateDirectories: true)
        let made = try Command.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                                    "-nodes", "-subj", "/CN=stranger", "-days", "1",
                                    "-keyout", scratch + "/k.pem", "-out", scratch + "/c.pem"])
        try #require(made.succeeded, "\(made.stderr)")
        for path in ["/1.0", "/1.0/no-such-route"] {
            let stranger = try curl(from: h1, h2.url + path, certificate: scratch + "/c.pem", key: scratch + "/k.pem")
            #expect(stranger.status == 403 && stranger.body.contains("not trusted"), "\(path): \(stranger)")
        }
        let anonymous = try curl(from: h1, h2.url + "/1.0", certificate: nil, key: nil)
        #expect(anonymous.status == 403 && anonymous.body.contains("no client certificate"), "\(anonymous)")

        // trust remove revokes at once: h1's next call is refused, by curl and by the daemon.
        #expect(try godwit("trust", "remove", h1.name, "--dir", h2.dir).succeeded)
        #expect(try curl(from: h1, h2.url + "/1.0", certificate: h1.certificate, key: h1.key).status == 403)
        expectFailure(try godwit("remote", "info", h2.name, "--dir", h1.dir), mentioning: ["not trusted"])

        // A token works once: h1 joins again (URL from the token), a second use is refused.
        let token = try json(try godwit("trust", "add", "again", "--dir", h2.dir, "--format", "json")) as? [String: Any]
        let secret = try #require(token?["token"] as? String)
        #expect(try godwit("remote", "add", "h2b", "--token", secret, "--dir", h1.dir).succeeded)
        #expect(try curl(from: h1, h2.url + "/1.0", certificate: h1.certificate, key: h1.key).status == 200)
        expectFailure(try godwit("remote", "add", "h2c", "--token", secret, "--dir", h1.dir),
                      mentioning: ["already used"])
        expectFailure(try godwit("remote", "add", "h2b", "--token", secret, "--dir", h1.dir),
                      mentioning: ["already exists", "remote remove h2b"])

        // Wrong and expired tokens say what is wrong.
        expectFailure(try godwit("remote", "add", "bad", "--token", "not-a-token", "--dir", h1.dir),
                      mentioning: ["join token", "hint:"])
        let late = try json(try godwit("trust", "add", "late", "--expires-in", "1", "--dir", h2.dir, "--format", "json"))
            as? [String: Any]
        let lateSecret = try #require(late?["token"] as? String)
        Thread.sleep(forTimeInterval: 1.5)  // let the token expire; not a timing assertion
        expectFailure(try godwit("remote", "add", "late", "--token", lateSecret, "--dir", h1.dir),
                      mentioning: ["expired", "trust add"])

        // remote remove forgets the pin; unknown names say how to list.
        #expect(try godwit("remote", "remove", "h2b", "--dir", h1.dir).succeeded)
        let left = try json(try godwit("remote", "list", "--dir", h1.dir, "--format", "json")) as? [[String: Any]]
        #expect(left?.map { $0["name"] as? String } == [h2.name])
        expectFailure(try godwit("remote", "remove", "nope", "--dir", h1.dir), mentioning: ["no remote named 'nope'", "remote list"])
        expectFailure(try godwit("trust", "remove", "nope", "--dir", h2.dir), mentioning: ["nope", "trust list"])
    }
}
