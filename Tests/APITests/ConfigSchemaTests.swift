import Testing
import GodwitCore
@testable import API

@Suite struct ConfigSchemaTests {
    @Test func defaultsMatchLXD() {
        let config = ContainerConfig()
        #expect(config.incrementalMemory == false)
        #expect(config.incrementalGoalPercent == 70)
        #expect(config.incrementalIterations == 10)
        #expect(config.downtimeTargetMilliseconds == 300)
        #expect(config.postCopyAllowed)
    }

    @Test func valuesAreCanonicalised() throws {
        #expect(try ConfigKey.validate("limits.memory", "256MiB") == String(256 << 20))
        #expect(try ConfigKey.validate("limits.memory", "1GB") == "1000000000")
        #expect(try ConfigKey.validate("migration.incremental.memory", "yes") == "true")
        #expect(try ConfigKey.validate("migration.incremental.memory.downtime", "250ms") == "250")
        let config = try ContainerConfig(validating: ["limits.memory": "1GiB", "environment.FOO": "bar baz"])
        #expect(config.memoryLimit == 1 << 30)
        #expect(config.environment == ["FOO": "bar baz"])
    }

    @Test(arguments: [
        ("limits.memory", "lots", "a size"),
        ("limits.memory", "0", "a size"),
        ("migration.incremental.memory.goal", "101", "1...100"),
        ("migration.incremental.memory.iterations", "0", "1...999"),
        ("migration.incremental.memory", "maybe", "true or false"),
        ("limits.cpu", "-1", "CPUs"),
        ("limits.nonsense", "1", "known keys"),
        ("environment.1X", "v", "environment.NAME"),
    ])
    func badValuesSayWhatIsExpected(key: String, value: String, expected: String) {
        do {
            _ = try ConfigKey.validate(key, value)
            Issue.record("\(key)=\(value) was accepted")
        } catch let error as GodwitError {
            #expect(error.description.contains(expected), "\(error)")
        } catch { Issue.record("\(error)") }
    }

    @Test func assignments() throws {
        #expect(try ConfigKey.parseAssignment("limits.processes=100") == ("limits.processes", "100"))
        #expect(throws: GodwitError.self) { try ConfigKey.parseAssignment("=1") }
        #expect(throws: GodwitError.self) { try ConfigKey.parseAssignment("limits.processes") }
    }

    @Test func names() {
        for good in ["web", "web-1", "a", "Db2"] { #expect(throws: Never.self) { try ContainerName.validate(good) } }
        for bad in ["", "1web", "web-", "we_b", "web.1", String(repeating: "a", count: 64), "wéb"] {
            #expect(throws: GodwitError.self, "\(bad)") { try ContainerName.validate(bad) }
        }
    }

    @Test func byteSizes() {
        #expect(ByteSize.parse("4096") == 4096)
        #expect(ByteSize.parse("1.5GiB") == 3 << 29)
        #expect(ByteSize.parse("x") == nil)
        #expect(ByteSize.format(256 << 20) == "256.0 MiB")
    }
}
