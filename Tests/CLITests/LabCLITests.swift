import Foundation
import GodwitCore
import Testing

/// Runs the built `godwit` binary the way a user does. `swift test` runs the test bundle
/// from the build products directory, where `godwit` sits too. Input errors are reported
/// before anything needs root, so these run as any user.
@Suite struct LabCLITests {
    static var godwit: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        return URL(fileURLWithPath: exe).deletingLastPathComponent().appendingPathComponent("godwit").path
    }

    /// Per test (a suite struct is instantiated per test); `lab up` creates it.
    let stateRoot = NSTemporaryDirectory() + "godwit-labcli-" + UUID().uuidString

    static func uniqueName() -> String {
        "c" + String((0..<7).map { _ in "abcdefghijklmnopqrstuvwxyz0123456789".randomElement()! })
    }

    func removeStateRoot() { try? FileManager.default.removeItem(atPath: stateRoot) }

    func godwit(_ arguments: String...) throws -> CommandResult {
        try #require(FileManager.default.isExecutableFile(atPath: Self.godwit), "build godwit first: \(Self.godwit)")
        var environment = ProcessInfo.processInfo.environment
        environment["GODWIT_LAB_ROOT"] = stateRoot
        return try Command.run([Self.godwit] + arguments, environment: environment)
    }

    func expectFailure(_ result: CommandResult, mentioning words: [String],
                       sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(result.status != 0, "exit status of \(result.argv.dropFirst().joined(separator: " "))", sourceLocation: sourceLocation)
        for word in words {
            #expect(result.stderr.contains(word), "stderr lacks '\(word)': \(result.stderr)", sourceLocation: sourceLocation)
        }
    }

    @Test func badRate() throws {
        let name = Self.uniqueName()
        defer { _ = try? godwit("lab", "down", "--name", name); removeStateRoot() }
        expectFailure(try godwit("lab", "up", "--name", name, "--bandwidth", "1gbt"), mentioning: ["1gbt", "unknown unit", "gbit", "mbps"])
        expectFailure(try godwit("lab", "shape", "--name", name, "h1", "1gbt"), mentioning: ["1gbt", "unlimited"])
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/godwit-\(name)-fabric"))
    }

    @Test func unknownFlag() throws {
        expectFailure(try godwit("lab", "up", "--bogus"), mentioning: ["--bogus"])
        expectFailure(try godwit("lab", "frobnicate"), mentioning: ["frobnicate"])
    }

    @Test func badNameAndHostCount() throws {
        expectFailure(try godwit("lab", "up", "--name", "Bad-Name"), mentioning: ["invalid lab name", "lowercase"])
        expectFailure(try godwit("lab", "up", "--name", Self.uniqueName(), "--hosts", "17"), mentioning: ["too many hosts", "16"])
        expectFailure(try godwit("lab", "up", "--hosts", "many"), mentioning: ["many"])
    }

    @Test(.enabled(if: geteuid() == 0, "needs root to drop to nobody"))
    func notRoot() throws {
        let asNobody = try Command.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                                        Self.godwit, "lab", "up", "--name", Self.uniqueName()])
        expectFailure(asNobody, mentioning: ["needs root", "sudo"])
    }

    @Test(.enabled(if: geteuid() == 0, "needs root"))
    func existingLabAndTheFullCycle() throws {
        let name = Self.uniqueName()
        defer { _ = try? godwit("lab", "down", "--name", name); removeStateRoot() }
        let up = try godwit("lab", "up", "--name", name, "--hosts", "2")
        #expect(up.status == 0, "\(up.stderr)")
        #expect(up.stdout.contains("godwit-\(name)-h2"))

        expectFailure(try godwit("lab", "up", "--name", name), mentioning: ["already exists", "godwit lab down --name \(name)"])

        let shape = try godwit("lab", "shape", "--name", name, "h2", "800mbit")
        #expect(shape.status == 0, "\(shape.stderr)")
        let status = try godwit("lab", "status", "--name", name, "--format", "json")
        #expect(status.status == 0, "\(status.stderr)")
        let json = try JSONSerialization.jsonObject(with: Data(status.stdout.utf8)) as? [String: Any]
        #expect(json?["running"] as? Bool == true)
        let rates = (json?["hosts"] as? [[String: Any]])?.compactMap { ($0["endpoint"] as? [String: Any])?["rate"] as? String }
        #expect(rates == ["unlimited", "800mbit"])
        #expect(try godwit("lab", "status").stdout.contains("lab \(name): running"))

        // A measurement, not a timed assertion: the machine is noisy.
        let test = try godwit("lab", "link-test", "--name", name, "h1", "h2", "--seconds", "1", "--format", "json")
        #expect(test.status == 0, "\(test.stderr)")
        let result = try JSONSerialization.jsonObject(with: Data(test.stdout.utf8)) as? [String: Any]
        #expect(((result?["megabitsPerSecond"] as? Double) ?? 0) > 0)
        #expect(result?["toRate"] as? String == "800mbit")
        expectFailure(try godwit("lab", "link-test", "--name", name, "h1", "h9"), mentioning: ["no host 'h9'"])

        let down = try godwit("lab", "down", "--name", name)
        #expect(down.status == 0 && down.stdout.contains("removed lab \(name)"), "\(down.stderr)")
        #expect(!FileManager.default.fileExists(atPath: "/run/netns/godwit-\(name)-fabric"))
        #expect(try godwit("lab", "down", "--name", name).stdout.contains("nothing to remove"))
        expectFailure(try godwit("lab", "status", "--name", name), mentioning: ["no lab named"])
    }
}
