import Foundation
import GodwitCore

// Target config: container configuration as the CLI, REST clients and a migration's
// source give it (Sources/API compiled in): `key=value` through ConfigKey, sizes through
// ByteSize, and timeouts through WaitTimeout.
//
// Input: UTF-8 text, "key=value" (the part after '=' is also tried as a size and a timeout).

func fuzzOne(_ bytes: [UInt8]) {
    let text = String(decoding: bytes, as: UTF8.self)
    if let assignment = try? ConfigKey.parseAssignment(text) {
        let (key, value) = assignment
        // Canonical values validate to themselves, and the typed accessors read them.
        fuzzCheck((try? ConfigKey.validate(key, value)) == value, "\(key)=\(value) is not canonical")
        if let config = try? ContainerConfig(validating: [key: value]) {
            _ = (config.memoryLimit, config.processLimit, config.cpuLimit, config.environment, config.incrementalMemory)
            _ = (config.incrementalGoalPercent, config.incrementalIterations, config.downtimeTargetMilliseconds)
            _ = (config.autoConverge, config.postCopyAllowed, config.forcedTracker)
            if key == "limits.memory" {
                fuzzCheck(config.memoryLimit.map { $0 > 0 && $0 <= ByteSize.maximum } == true, "memory \(value)")
            }
            if key == "limits.cpu" { fuzzCheck(config.cpuLimit.map { $0.isFinite && $0 >= 0.01 && $0 <= 1024 } == true, "cpu \(value)") }
        }
    }
    let value = text.split(separator: "=", maxSplits: 1).last.map(String.init) ?? text
    if let bytes = try? ByteSize.parseChecked(value) {
        fuzzCheck(bytes <= ByteSize.maximum, "\(value) parsed as \(bytes)")
        _ = ByteSize.format(bytes)
    }
    do {
        if let timeout = try WaitTimeout.parse(value) {
            fuzzCheck(timeout >= .zero && timeout <= .seconds(WaitTimeout.maximumSeconds), "timeout \(value)")
            _ = ContinuousClock.now.advanced(by: timeout)  // what a wait does with it
        }
    } catch {}
    if let seconds = Int(value) { _ = try? WaitTimeout.check(seconds: seconds) }
    try? ContainerName.validate(value)
}

func fuzzSeeds() -> [String: [UInt8]] {
    let seeds = ["limits.memory=256MiB", "limits.memory=1e20GiB", "limits.cpu=0.5", "limits.processes=100",
                 "migration.incremental.memory.downtime=250ms", "migration.incremental.memory=yes",
                 "migration.incremental.memory.tracker=uffd-wp", "environment.FOO=bar", "timeout=1e17", "timeout=-1"]
    return Dictionary(uniqueKeysWithValues: seeds.enumerated().map { ("\($0.offset)", Array($0.element.utf8)) })
}
