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
        #expect(config.postCopyGraceSeconds == 180)
    }

    @Test func valuesAreCanonicalised() throws {
        #expect(try ConfigKey.validate("limits.memory", "256MiB") == String(256 << 20))
        #expect(try ConfigKey.validate("limits.memory", "1GB") == "1000000000")
        #expect(try ConfigKey.validate("migration.incremental.memory", "yes") == "true")
        #expect(try ConfigKey.validate("migration.incremental.memory.downtime", "250ms") == "250")
        #expect(try ConfigKey.validate("migration.postcopy.grace", "30s") == "30")
        #expect(try ContainerConfig(validating: ["migration.postcopy.grace": "3"]).postCopyGraceSeconds == 3)
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
        ("migration.postcopy.grace", "0", "1...3600"),
        ("migration.postcopy.grace", "3601", "1...3600"),
        ("migration.postcopy.grace", "nan", "seconds"),
        ("migration.postcopy.grace", "1e3", "seconds"),
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

    /// Numbers that used to trap the daemon (UInt64(inf), UInt64(1e29)) or slipped through.
    @Test(arguments: [
        ("limits.memory", "1e20GiB", "at most 9223372036854775807 bytes"),
        ("limits.memory", "18446744073709551616", "at most"),
        ("limits.memory", "9223372036854775808", "at most"),
        ("limits.memory", "99999999999999999999999", "at most"),
        ("limits.memory", "0x1p70B", "at most"),
        ("limits.memory", "infGiB", "a size such as"),
        ("limits.memory", "nanMiB", "a size such as"),
        ("limits.memory", "-1GiB", "a size such as"),
        ("limits.memory", "1e-30B", "a size such as"),
        ("limits.cpu", "nan", "0.01 to 1024"),
        ("limits.cpu", "inf", "0.01 to 1024"),
        ("limits.cpu", "1e400", "0.01 to 1024"),
        ("limits.cpu", "1e-300", "0.01 to 1024"),
        ("limits.processes", "9223372036854775808", "1...4194304"),
        ("migration.incremental.memory.downtime", "99999999999999999999ms", "milliseconds in 1...600000"),
        ("migration.incremental.memory.goal", "-9223372036854775808", "1...100"),
    ])
    func hugeAndNonFiniteNumbersAreRefused(key: String, value: String, expected: String) {
        do {
            let canonical = try ConfigKey.validate(key, value)
            Issue.record("\(key)=\(value) was accepted as \(canonical)")
        } catch let error as GodwitError {
            #expect(error.description.contains(expected), "\(error)")
            #expect(error.message.contains("invalid value '\(value)' for \(key)"), "\(error)")
        } catch { Issue.record("\(error)") }
    }

    @Test func theLargestSizesStillFit() throws {
        #expect(try ConfigKey.validate("limits.memory", "9223372036854775807") == "9223372036854775807")
        #expect(try ConfigKey.validate("limits.memory", "8191TiB") == String(UInt64(8191) << 40))
        #expect(try ConfigKey.validate("limits.cpu", "0.01") == "0.01")
        #expect(try ConfigKey.validate("limits.cpu", "1024") == "1024")
        #expect(try ByteSize.parseChecked("8e6TiB") == UInt64(8e6 * 1_099_511_627_776))
        #expect(throws: ByteSize.ParseError.tooLarge) { try ByteSize.parseChecked("9e6TiB") }
    }

    @Test func waitTimeouts() throws {
        #expect(try WaitTimeout.parse(nil) == nil)
        #expect(try WaitTimeout.parse("-1") == nil)
        #expect(try WaitTimeout.parse("30") == .seconds(30))
        #expect(try WaitTimeout.parse("0.5") == .milliseconds(500))
        #expect(try WaitTimeout.parse("2592000") == .seconds(2_592_000))
        for bad in ["1e17", "1e+17", "2592001", "nan", "inf", "-inf", "abc", ""] {
            #expect(throws: GodwitError.self, "\(bad)") { try WaitTimeout.parse(bad) }
        }
        do {
            _ = try WaitTimeout.parse("1e17")
        } catch let error as GodwitError {
            #expect(error.message == "invalid timeout '1e17': more than 2592000 s (30 days)")
            #expect(error.hint?.contains("-1 to wait as long as it takes") == true)
        }
        #expect(try WaitTimeout.check(seconds: -1) == nil)
        #expect(try WaitTimeout.check(seconds: 10) == .seconds(10))
        #expect(throws: GodwitError.self) { try WaitTimeout.check(seconds: Int.max) }
    }
}
