import Foundation
import GodwitCore

extension ConfigKey.Kind {
    var isSyscalls: Bool { if case .syscalls = self { true } else { false } }
}

/// The configuration keys a container accepts, each with its parser and default. One place,
/// so the CLI, the daemon and migration all validate the same way and give the same errors.
public enum ConfigKey {
    public enum Kind: Sendable {
        case bytes          // "256MiB", "1GiB", "512MB", "1048576"
        case integer(ClosedRange<Int>)
        case cpus           // "1", "0.5", "2"
        case boolean
        case milliseconds(ClosedRange<Int>)
        /// Whole seconds, "180" or "180s".
        case seconds(ClosedRange<Int>)
        case string
        /// One of these words.
        case choice([String])
        /// A link rate as tc writes it ("100mbit", "1gbit", "50mbps" = 50 MB/s), or "unlimited".
        case rate
        /// Syscall names (SecurityNames.syscalls), comma or space separated.
        case syscalls
        /// Capability names (SecurityNames.capabilities), with or without CAP_.
        case capabilities
    }

    public struct Definition: Sendable {
        public var key: String
        public var kind: Kind
        public var defaultValue: String?
        public var help: String
    }

    public static let definitions: [Definition] = [
        .init(key: "limits.memory", kind: .bytes, defaultValue: nil, help: "memory limit, e.g. 512MiB"),
        .init(key: "limits.processes", kind: .integer(1...4_194_304), defaultValue: nil, help: "maximum number of processes"),
        .init(key: "limits.cpu", kind: .cpus, defaultValue: nil, help: "CPU time as a number of CPUs, e.g. 0.5 or 2"),
        .init(key: "migration.incremental.memory", kind: .boolean, defaultValue: "false",
              help: "incremental (pre-copy) memory transfer to reduce downtime"),
        .init(key: "migration.incremental.memory.goal", kind: .integer(1...100), defaultValue: "70",
              help: "percentage of memory in sync before the final stop"),
        .init(key: "migration.incremental.memory.iterations", kind: .integer(1...999), defaultValue: "10",
              help: "maximum number of pre-copy rounds"),
        .init(key: "migration.incremental.memory.downtime", kind: .milliseconds(1...600_000), defaultValue: "300",
              help: "stop pre-copy once the predicted final pause is below this (ms)"),
        .init(key: "migration.incremental.memory.autoconverge", kind: .boolean, defaultValue: "true",
              help: "throttle the container's CPU when pre-copy rounds don't converge"),
        .init(key: "migration.incremental.memory.tracker", kind: .choice(["auto", "uffd-wp", "soft-dirty", "hashing"]),
              defaultValue: "auto",
              help: "dirty tracker for pre-copy: auto (what `godwit check` found on the source), uffd-wp, soft-dirty or hashing"),
        .init(key: "migration.postcopy", kind: .choice(["ask", "true", "false"]), defaultValue: "ask",
              help: "post-copy and hybrid can lose the container if the link fails after the commit. ask: only when `godwit move --mode` names them; true: `--mode auto` may pick them too; false: never"),
        .init(key: "migration.postcopy.grace", kind: .seconds(1...3600), defaultValue: "180",
              help: "after a post-copy or hybrid commit, how long the page channel may stay down (s) while the hosts reconnect; past it the container is lost"),
        .init(key: "migration.bandwidth", kind: .rate, defaultValue: "unlimited",
              help: "cap on the memory pages a move sends, e.g. 100mbit, 1gbit or 50mbps (bytes/s, as in tc); `godwit move --bandwidth` wins"),
        .init(key: "migration.compression", kind: .choice(["auto", "on", "off"]), defaultValue: "auto",
              help: "zstd compression of memory pages on the wire: auto (only while the link is slower than compressing), on (every chunk that shrinks), off"),
        .init(key: "security.privileged", kind: .boolean, defaultValue: "false",
              help: "run without a user namespace: root inside is root on the host (only at launch)"),
        .init(key: "security.syscalls.deny", kind: .syscalls, defaultValue: nil,
              help: "more syscalls that fail with EPERM inside, e.g. \"mount, ptrace\" (from the next start)"),
        .init(key: "security.syscalls.deny_default", kind: .boolean, defaultValue: "true",
              help: "deny kexec, module loading, open_by_handle_at and the keyring syscalls (from the next start)"),
        .init(key: "security.capabilities.drop", kind: .capabilities, defaultValue: nil,
              help: "more capabilities out of the bounding set, e.g. \"net_raw sys_ptrace\" (from the next start)"),
        .init(key: volatileIdmapBase, kind: .integer(1...Int(UInt32.max) - 65536), defaultValue: nil,
              help: "host uid and gid that are 0 inside; chosen by the daemon at launch, kept by moves"),
    ]

    /// The first host id of the container's map. Set by the daemon (never by a user), and
    /// carried with the container's configuration by a move, whose destination reserves it.
    public static let volatileIdmapBase = "volatile.idmap.base"

    /// Keys the daemon owns: a user's launch, PUT or PATCH may not set, change or remove them.
    public static func isDaemonOwned(_ key: String) -> Bool { key.hasPrefix("volatile.") }

    /// Keys fixed at launch: changing them would need the container's files re-owned.
    public static let launchOnly: Set<String> = ["security.privileged"]

    /// `environment.NAME` keys carry the init's environment; anything else must be defined above.
    public static let environmentPrefix = "environment."

    public static func definition(_ key: String) -> Definition? {
        definitions.first { $0.key == key }
    }

    /// Returns the canonical form of `value` for `key`, or an error that says what is wrong.
    public static func validate(_ key: String, _ value: String) throws -> String {
        if key.hasPrefix(environmentPrefix) {
            let name = key.dropFirst(environmentPrefix.count)
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" }), name.first?.isNumber == false else {
                throw GodwitError("invalid environment key '\(key)'", hint: "use environment.NAME with letters, digits and _")
            }
            return value
        }
        guard let definition = definition(key) else {
            throw GodwitError("unknown configuration key '\(key)'",
                              hint: "known keys: " + definitions.map(\.key).joined(separator: ", ") + ", environment.*")
        }
        func bad(_ expected: String) -> GodwitError {
            GodwitError("invalid value '\(value)' for \(key): expected \(expected)", hint: definition.help)
        }
        switch definition.kind {
        case .bytes:
            let bytes: UInt64
            do throws(ByteSize.ParseError) { bytes = try ByteSize.parseChecked(value) } catch {
                throw bad(error == .tooLarge ? "a size of at most \(ByteSize.maximum) bytes (8 EiB)" : "a size such as 256MiB, 1GiB or 1048576")
            }
            guard bytes > 0 else { throw bad("a size such as 256MiB, 1GiB or 1048576") }
            return String(bytes)
        case .integer(let range):
            guard let n = Int(value), range.contains(n) else { throw bad("an integer in \(range.lowerBound)...\(range.upperBound)") }
            return String(n)
        case .milliseconds(let range):
            let digits = value.hasSuffix("ms") ? String(value.dropLast(2)) : value
            guard let n = Int(digits), range.contains(n) else { throw bad("milliseconds in \(range.lowerBound)...\(range.upperBound)") }
            return String(n)
        case .seconds(let range):
            // Whole seconds only: no "nan", "inf" or exponent can reach a timer.
            let digits = value.hasSuffix("s") ? String(value.dropLast()) : value
            guard let n = Int(digits), range.contains(n) else { throw bad("seconds in \(range.lowerBound)...\(range.upperBound)") }
            return String(n)
        case .cpus:
            // The cgroup quota is 1 ms per 100 ms period at least: 0.01 CPU. `n.isFinite`
            // also refuses "nan" and "inf", which Double(String) accepts.
            guard let n = Double(value), n.isFinite, n >= 0.01, n <= 1024 else {
                throw bad("a number of CPUs from 0.01 to 1024, such as 0.5 or 2")
            }
            return value
        case .boolean:
            switch value.lowercased() {
            case "true", "1", "yes", "on": return "true"
            case "false", "0", "no", "off": return "false"
            default: throw bad("true or false")
            }
        case .string:
            return value
        case .choice(let words):
            guard words.contains(value) else { throw bad("one of " + words.joined(separator: ", ")) }
            return value
        case .rate:
            do { return try MigrationBandwidth.parse(value)?.description ?? "unlimited" } catch let error as GodwitError {
                throw GodwitError("invalid value for \(key): \(error.message)", hint: error.hint ?? definition.help)
            }
        case .syscalls, .capabilities:
            let table = definition.kind.isSyscalls ? SecurityNames.syscalls : SecurityNames.capabilities
            let words = SecurityNames.words(value)
            guard words.count <= 256 else { throw bad("at most 256 names") }
            do { _ = try SecurityNames.numbers(words, in: table, what: definition.kind.isSyscalls ? "syscall" : "capability") }
            catch let error as GodwitError { throw GodwitError("invalid value for \(key): \(error.message)", hint: error.hint) }
            return words.joined(separator: ",")
        }
    }

    /// Parses "key=value" as given to `launch -c`.
    public static func parseAssignment(_ text: String) throws -> (String, String) {
        guard let eq = text.firstIndex(of: "="), eq != text.startIndex else {
            throw GodwitError("invalid configuration '\(text)'", hint: "use key=value, e.g. -c limits.memory=256MiB")
        }
        let key = String(text[..<eq]), value = String(text[text.index(after: eq)...])
        return (key, try validate(key, value))
    }
}

/// A container's configuration: validated values, defaults filled in on read.
public struct ContainerConfig: Codable, Sendable, Equatable {
    public var values: [String: String]

    public init(_ values: [String: String] = [:]) { self.values = values }

    public init(validating raw: [String: String]) throws {
        var values: [String: String] = [:]
        for (key, value) in raw { values[key] = try ConfigKey.validate(key, value) }
        self.values = values
    }

    public subscript(key: String) -> String? {
        values[key] ?? ConfigKey.definition(key)?.defaultValue
    }

    public var memoryLimit: UInt64? { values["limits.memory"].flatMap { UInt64($0) } }
    public var processLimit: Int? { values["limits.processes"].flatMap { Int($0) } }
    public var cpuLimit: Double? { values["limits.cpu"].flatMap { Double($0) } }
    public var privileged: Bool { self["security.privileged"] == "true" }
    /// nil for a privileged container, or one launched before user namespaces (see
    /// RuntimeDriver.securityProfile).
    public var idmapBase: UInt32? { values[ConfigKey.volatileIdmapBase].flatMap { UInt32($0) } }
    /// The syscall numbers that fail with EPERM: the defaults (unless turned off) and the key's.
    public var deniedSyscalls: [Int32] {
        let defaults = self["security.syscalls.deny_default"] == "false" ? [] : SecurityNames.defaultSyscallDenials
        return Self.numbers(defaults, plus: values["security.syscalls.deny"], in: SecurityNames.syscalls)
    }
    /// The capability numbers out of the bounding set: the defaults and the key's.
    public var droppedCapabilities: [Int32] {
        Self.numbers(SecurityNames.defaultCapabilityDrops, plus: values["security.capabilities.drop"], in: SecurityNames.capabilities)
    }
    /// `words` dedupes names, so the defaults and the key's list go through it together.
    private static func numbers(_ defaults: [String], plus key: String?, in table: [String: Int32]) -> [Int32] {
        SecurityNames.words((defaults + [key ?? ""]).joined(separator: ",")).compactMap { table[$0] }
    }
    public var environment: [String: String] {
        var env: [String: String] = [:]
        for (key, value) in values where key.hasPrefix(ConfigKey.environmentPrefix) {
            env[String(key.dropFirst(ConfigKey.environmentPrefix.count))] = value
        }
        return env
    }
    public var incrementalMemory: Bool { self["migration.incremental.memory"] == "true" }
    public var incrementalGoalPercent: Int { Int(self["migration.incremental.memory.goal"] ?? "70") ?? 70 }
    public var incrementalIterations: Int { Int(self["migration.incremental.memory.iterations"] ?? "10") ?? 10 }
    public var downtimeTargetMilliseconds: Int { Int(self["migration.incremental.memory.downtime"] ?? "300") ?? 300 }
    public var autoConverge: Bool { self["migration.incremental.memory.autoconverge"] != "false" }
    /// Post-copy and hybrid may run at all (asked for by `--mode`, or picked by auto).
    public var postCopyAllowed: Bool { self["migration.postcopy"] != "false" }
    /// `--mode auto` may pick post-copy or hybrid: the container's owner accepted the risk.
    public var postCopyOptedIn: Bool { self["migration.postcopy"] == "true" }
    /// How long a post-copy or hybrid move waits for a broken page channel to come back
    /// after the commit (both hosts read it from the container's config).
    public var postCopyGraceSeconds: Int {
        let parsed = self["migration.postcopy.grace"].flatMap { Int($0) } ?? 180
        return min(max(parsed, 1), 3600)
    }
    /// migration.bandwidth: nil when unlimited (or unreadable: values are validated on the way in).
    public var migrationBandwidth: Bandwidth? {
        self["migration.bandwidth"].flatMap { try? MigrationBandwidth.parse($0) }
    }
    /// migration.compression: auto, on or off.
    public var migrationCompression: String { self["migration.compression"] ?? "auto" }
    /// migration.incremental.memory.tracker: nil for auto (the host check's choice).
    public var forcedTracker: DirtyTrackerKind? { self["migration.incremental.memory.tracker"].flatMap(DirtyTrackerKind.init(rawValue:)) }
}

/// The cap on a move's memory pages, as `godwit move --bandwidth`, the REST request and
/// `migration.bandwidth` take it: one parser, so all three refuse the same inputs alike.
public enum MigrationBandwidth {
    /// Below this a move of even a small container takes minutes: surely a typo (kbit for mbit).
    public static let minimum = Bandwidth(bitsPerSecond: 1_000_000)

    /// nil for "unlimited"; throws for anything that is not a rate from 1mbit to 100tbit.
    public static func parse(_ text: String) throws -> Bandwidth? {
        if text == "unlimited" { return nil }
        let rate = try Bandwidth(parsing: text)
        guard rate >= minimum else {
            throw GodwitError("rate '\(text)' is below \(minimum)", hint: "give at least 1mbit (bps is bytes/s, as in tc), or `unlimited`")
        }
        return rate
    }
}

/// Sizes as users write them: binary (KiB, MiB, GiB) and decimal (kB, MB, GB) units.
public enum ByteSize {
    /// The largest size accepted: cgroup v1 and v2 read limits as signed 64-bit numbers.
    public static let maximum = UInt64(Int64.max)

    public enum ParseError: Error, Equatable {
        case notASize, tooLarge
    }

    public static func parse(_ text: String) -> UInt64? { try? parseChecked(text) }

    /// Like `parse`, but says whether the text was no size at all or a size too large to
    /// hold: "1e20GiB" is a number, and converting it unchecked would trap.
    public static func parseChecked(_ text: String) throws(ParseError) -> UInt64 {
        let units: [(String, UInt64)] = [
            ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40),
            ("kB", 1_000), ("KB", 1_000), ("MB", 1_000_000), ("GB", 1_000_000_000), ("TB", 1_000_000_000_000),
            ("B", 1),
        ]
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)
            // Double(String) also takes "nan", "inf" and hex floats: only finite numbers count.
            guard let value = Double(number), value.isFinite, value >= 0 else { throw .notASize }
            let bytes = value * Double(factor)
            // Double(maximum) rounds up to 2^63, so compare strictly: anything below fits.
            guard bytes < Double(maximum) else { throw .tooLarge }
            return UInt64(bytes)
        }
        if let bytes = UInt64(trimmed) {
            guard bytes <= maximum else { throw .tooLarge }
            return bytes
        }
        // All digits but no UInt64: too many of them.
        if !trimmed.isEmpty, trimmed.allSatisfy({ $0.isASCII && $0.isNumber }) { throw .tooLarge }
        throw .notASize
    }

    public static func format(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(bytes), unit = 0
        while value >= 1024, unit < units.count - 1 { value /= 1024; unit += 1 }
        return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
    }
}

/// Container (and image alias) names: what LXD accepts, so names work as hostnames.
public enum ContainerName {
    public static func validate(_ name: String) throws {
        let allowed = name.allSatisfy { ($0.isASCII && ($0.isLetter || $0.isNumber)) || $0 == "-" }
        guard !name.isEmpty, name.count <= 63, allowed, name.first?.isLetter == true, !name.hasSuffix("-") else {
            throw GodwitError("invalid container name '\(name)'",
                              hint: "use 1-63 letters, digits and '-', starting with a letter and not ending with '-'")
        }
    }
}
