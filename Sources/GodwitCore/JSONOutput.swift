import Foundation

/// JSON for scripts (`--format json`): stable key order so output diffs cleanly.
public enum JSONOutput {
    public static func encode<T: Encodable>(_ value: T) throws -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return String(decoding: try encoder.encode(value), as: UTF8.self)
    }
}

/// The two output formats every reporting command accepts.
public enum OutputFormat: String, CaseIterable, Sendable {
    case human, json
}
