import Foundation

/// The part of YAML that configuration files use: block mappings and sequences, plain
/// and quoted scalars, comments, empty flow collections (`[]`, `{}`) and flow sequences
/// of scalars (`[a, b]`). Enough for `godwit init --preseed` files (which LXD users write
/// as YAML) and godwitd's config file; no anchors, tags, multi-line scalars or multiple
/// documents. Written here because none of the Swift packages this machine has reads
/// YAML; a stricter subset than YAML means an error, never a different meaning.
///
/// Bounds: at most 1 MiB of text, 64 levels of nesting, 10,000 lines.
public indirect enum YAMLValue: Equatable, Sendable {
    case scalar(String)
    case sequence([YAMLValue])
    /// Keys in file order (no duplicates).
    case mapping([(String, YAMLValue)])
    case null

    public static func == (a: YAMLValue, b: YAMLValue) -> Bool {
        switch (a, b) {
        case (.scalar(let x), .scalar(let y)): x == y
        case (.sequence(let x), .sequence(let y)): x == y
        case (.mapping(let x), .mapping(let y)): x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        case (.null, .null): true
        default: false
        }
    }

    public subscript(key: String) -> YAMLValue? {
        guard case .mapping(let entries) = self else { return nil }
        return entries.first { $0.0 == key }?.1
    }

    public var string: String? { if case .scalar(let s) = self { s } else { nil } }
}

public enum YAML {
    public static let maxBytes = 1 << 20
    public static let maxDepth = 64
    public static let maxLines = 10_000

    public static func parse(_ text: String) throws -> YAMLValue {
        guard text.utf8.count <= maxBytes else { throw GodwitError("YAML text is over \(maxBytes) bytes") }
        var parser = try Parser(text)
        return try parser.document()
    }

    /// Block style, two-space indentation; scalars quoted when plain style would change them.
    public static func emit(_ value: YAMLValue) -> String {
        var out = ""
        Emitter.block(value, indent: 0, into: &out)
        return out
    }
}

/// Lines are handled as Unicode scalars, not Characters: a quote followed by a combining
/// mark is one Character, which made `"` + U+06E2 not start a quoted string (found by the
/// yaml fuzz target).
private typealias Scalars = [Unicode.Scalar]

private extension Array where Element == Unicode.Scalar {
    var text: String { var s = ""; s.unicodeScalars.append(contentsOf: self); return s }
    func trimmed() -> Scalars {
        var a = startIndex, b = endIndex
        while a < b, self[a] == " " || self[a] == "\t" { a += 1 }
        while b > a, self[b - 1] == " " || self[b - 1] == "\t" { b -= 1 }
        return Array(self[a..<b])
    }
    func hasPrefix(_ p: String) -> Bool { starts(with: p.unicodeScalars) }
    static func == (a: Scalars, b: String) -> Bool { a.elementsEqual(b.unicodeScalars) }
}

private struct Line {
    var number: Int
    var indent: Int
    var content: Scalars
}

private struct Parser {
    var lines: [Line] = []
    var i = 0

    init(_ text: String) throws {
        var number = 0
        var current: Scalars = []
        var all: [Scalars] = []
        for u in text.unicodeScalars {
            if u == "\n" { all.append(current); current = [] } else { current.append(u) }
        }
        all.append(current)
        for var line in all {
            number += 1
            guard number <= YAML.maxLines else { throw GodwitError("YAML text has over \(YAML.maxLines) lines") }
            if line.last == "\r" { line.removeLast() }
            if let bad = line.first(where: { ($0.value < 0x20 && $0 != "\t") || $0.value == 0x7F }) {
                throw Self.error(number, "control character U+\(String(bad.value, radix: 16, uppercase: true)) in the text")
            }
            let indent = line.prefix { $0 == " " }.count
            let rest = Array(line.dropFirst(indent))
            if rest.first == "\t" { throw Self.error(number, "tabs can't indent YAML") }
            let content = try Self.stripComment(rest, line: number).trimmed()
            if content.isEmpty || (indent == 0 && (content == "---" || content == "...")) { continue }
            if let c = content.first, "%&*!".unicodeScalars.contains(c) {
                throw Self.error(number, "directives, anchors, aliases and tags are not supported")
            }
            lines.append(Line(number: number, indent: indent, content: content))
        }
    }

    static func error(_ line: Int, _ message: String) -> GodwitError { GodwitError("YAML line \(line): \(message)") }

    /// Drops a `#` comment that starts the content or follows a space, outside quotes.
    static func stripComment(_ s: Scalars, line: Int) throws -> Scalars {
        var quote: Unicode.Scalar?
        var previous: Unicode.Scalar = " "
        var index = 0
        while index < s.count {
            let c = s[index]
            if let q = quote {
                if c == q { quote = nil }
                if c == "\\" && q == "\"" { index += 1; if index == s.count { break } }
            } else if c == "\"" || c == "'" {
                if " :-[,".unicodeScalars.contains(previous) { quote = c }
            } else if c == "#" && (previous == " " || previous == "\t") {
                return Array(s[..<index])
            }
            previous = c
            index += 1
        }
        return s
    }

    mutating func document() throws -> YAMLValue {
        guard let first = lines.first else { return .null }
        let value = try block(indent: first.indent, depth: 0)
        if i < lines.count { throw Self.error(lines[i].number, "unexpected indentation") }
        return value
    }

    static func isSequenceItem(_ content: Scalars) -> Bool { content == "-" || content.hasPrefix("- ") }

    mutating func block(indent: Int, depth: Int) throws -> YAMLValue {
        guard depth < YAML.maxDepth else { throw Self.error(lines[i].number, "nested deeper than \(YAML.maxDepth) levels") }
        if Self.isSequenceItem(lines[i].content) { return try sequence(indent: indent, depth: depth) }
        if Self.splitKey(lines[i].content) != nil { return try mapping(indent: indent, depth: depth) }
        // A lone scalar block (a document that is one value).
        let value = try Self.scalar(lines[i].content, line: lines[i].number)
        i += 1
        return value
    }

    mutating func sequence(indent: Int, depth: Int) throws -> YAMLValue {
        var items: [YAMLValue] = []
        while i < lines.count, lines[i].indent == indent, Self.isSequenceItem(lines[i].content) {
            let line = lines[i]
            let rest = Array(line.content.dropFirst(1)).trimmed()
            if rest.isEmpty {
                i += 1
                items.append(try nested(under: indent, depth: depth))
            } else if Self.isSequenceItem(rest) || Self.splitKey(rest) != nil {
                // "- key: value" opens a mapping (or "- - x" a sequence) at the column of
                // what follows the dash: re-read this line as if it started there.
                let column = indent + (line.content.count - rest.count)
                lines[i] = Line(number: line.number, indent: column, content: rest)
                items.append(try block(indent: column, depth: depth + 1))
            } else {
                items.append(try Self.scalar(rest, line: line.number))
                i += 1
            }
        }
        if i < lines.count, lines[i].indent > indent { throw Self.error(lines[i].number, "unexpected indentation") }
        return .sequence(items)
    }

    mutating func mapping(indent: Int, depth: Int) throws -> YAMLValue {
        var entries: [(String, YAMLValue)] = []
        while i < lines.count, lines[i].indent == indent, !Self.isSequenceItem(lines[i].content) {
            let line = lines[i]
            guard let (rawKey, rawValue) = Self.splitKey(line.content) else {
                throw Self.error(line.number, "expected 'key: value'")
            }
            guard case .scalar(let key) = try Self.scalar(rawKey, line: line.number) else {
                throw Self.error(line.number, "a key must be a string")
            }
            if entries.contains(where: { $0.0 == key }) { throw Self.error(line.number, "duplicate key '\(key)'") }
            i += 1
            if rawValue.isEmpty {
                // A block below, deeper; or a sequence at the same indentation ("key:\n- a").
                if i < lines.count, lines[i].indent == indent, Self.isSequenceItem(lines[i].content) {
                    entries.append((key, try sequence(indent: indent, depth: depth + 1)))
                } else {
                    entries.append((key, try nested(under: indent, depth: depth)))
                }
            } else {
                entries.append((key, try Self.scalar(rawValue, line: line.number)))
            }
        }
        if i < lines.count, lines[i].indent > indent { throw Self.error(lines[i].number, "unexpected indentation") }
        return .mapping(entries)
    }

    /// The block under a line at `indent` (deeper), or null if there is none.
    mutating func nested(under indent: Int, depth: Int) throws -> YAMLValue {
        guard i < lines.count, lines[i].indent > indent else { return .null }
        return try block(indent: lines[i].indent, depth: depth + 1)
    }

    /// "key: value" or "key:" (outside quotes): the key and the (trimmed) value.
    static func splitKey(_ s: Scalars) -> (Scalars, Scalars)? {
        var quote: Unicode.Scalar?
        var index = 0
        while index < s.count {
            let c = s[index]
            if let q = quote {
                if c == "\\" && q == "\"" { index += 2; continue }
                if c == q { quote = nil }
            } else if (c == "\"" || c == "'") && index == 0 {
                quote = c
            } else if (c == "[" || c == "{") && index == 0 {
                return nil
            } else if c == ":" {
                let after = index + 1
                if after == s.count || s[after] == " " {
                    let key = Array(s[..<index]).trimmed()
                    guard !key.isEmpty else { return nil }
                    return (key, Array(s[after...]).trimmed())
                }
            }
            index += 1
        }
        return nil
    }

    static func scalar(_ s: Scalars, line: Int) throws -> YAMLValue {
        if s == "~" || s == "null" { return .null }
        if s == "[]" { return .sequence([]) }
        if s == "{}" { return .mapping([]) }
        guard let first = s.first else { return .scalar("") }
        if first == "[" {
            guard s.last == "]", s.count >= 2 else { throw error(line, "unterminated flow sequence") }
            let inner = Array(s.dropFirst().dropLast())
            if inner.contains("[") || inner.contains("{") { throw error(line, "nested flow collections are not supported") }
            if inner.contains("\"") || inner.contains("'") {
                throw error(line, "quoted strings in a flow sequence are not supported; use one '- item' per line")
            }
            return .sequence(try inner.split(separator: ",", omittingEmptySubsequences: false).map {
                let item = Array($0).trimmed()
                guard !item.isEmpty else { throw error(line, "empty item in a flow sequence") }
                return try scalar(item, line: line)
            })
        }
        if first == "{" { throw error(line, "flow mappings are not supported; use one 'key: value' per line") }
        if first == "|" || first == ">" { throw error(line, "multi-line scalars are not supported") }
        if "&*!%@`".unicodeScalars.contains(first) {
            throw error(line, "'\(first)' can't start a plain value (anchors, aliases, tags and reserved characters are not supported); quote it")
        }
        if first == "\"" || first == "'" {
            guard s.count >= 2, s.last == first else { throw error(line, "unterminated quoted string") }
            let body = Array(s.dropFirst().dropLast())
            return .scalar(first == "'" ? try single(body, line: line) : try unescape(body, line: line))
        }
        return .scalar(s.text)
    }

    static func single(_ s: Scalars, line: Int) throws -> String {
        var out = String.UnicodeScalarView()
        var index = 0
        while index < s.count {
            if s[index] == "'" {
                guard index + 1 < s.count, s[index + 1] == "'" else { throw error(line, "a single quote inside a single-quoted string must be doubled") }
                index += 1
            }
            out.append(s[index])
            index += 1
        }
        return String(out)
    }

    static func unescape(_ s: Scalars, line: Int) throws -> String {
        var out = String.UnicodeScalarView()
        var index = 0
        while index < s.count {
            let c = s[index]
            index += 1
            if c == "\"" { throw error(line, "unescaped quote inside a quoted string") }
            guard c == "\\" else { out.append(c); continue }
            guard index < s.count else { throw error(line, "a quoted string ends in a backslash") }
            let e = s[index]
            index += 1
            switch e {
            case "n": out.append("\n")
            case "t": out.append("\t")
            case "\\", "\"", "/": out.append(e)
            case "u":
                guard index + 4 <= s.count, let v = UInt32(Array(s[index..<index + 4]).text, radix: 16),
                      let u = Unicode.Scalar(v) else { throw error(line, "bad \\u escape") }
                out.append(u)
                index += 4
            default: throw error(line, "unsupported escape \\\(e)")
            }
        }
        return String(out)
    }
}

private enum Emitter {
    static func block(_ value: YAMLValue, indent: Int, into out: inout String) {
        let pad = String(repeating: " ", count: indent)
        switch value {
        case .mapping(let entries) where !entries.isEmpty:
            for (key, v) in entries {
                out += pad + scalar(key) + ":"
                inline(v, indent: indent, into: &out)
            }
        case .sequence(let items) where !items.isEmpty:
            for item in items {
                if case .mapping(let entries) = item, !entries.isEmpty {
                    // "- key: value" with the rest of the mapping aligned under the key.
                    var nested = ""
                    block(item, indent: indent + 2, into: &nested)
                    out += pad + "- " + nested.dropFirst(indent + 2)
                } else {
                    out += pad + "-"
                    inline(item, indent: indent, into: &out)
                }
            }
        default:
            out += pad + flat(value) + "\n"
        }
    }

    /// What follows "key:" or "-": a scalar on the same line, or a block below.
    static func inline(_ v: YAMLValue, indent: Int, into out: inout String) {
        switch v {
        case .mapping(let e) where !e.isEmpty:
            out += "\n"
            block(v, indent: indent + 2, into: &out)
        case .sequence(let s) where !s.isEmpty:
            out += "\n"
            block(v, indent: indent + 2, into: &out)
        default:
            out += " " + flat(v) + "\n"
        }
    }

    static func flat(_ v: YAMLValue) -> String {
        switch v {
        case .scalar(let s): scalar(s)
        case .null: "null"
        case .sequence: "[]"
        case .mapping: "{}"
        }
    }

    /// Plain when reading it back gives the same string; double-quoted otherwise.
    static func scalar(_ s: String) -> String {
        let special = Set(":#\"'[]{},&*!|>%@`\\".unicodeScalars)
        let u = Array(s.unicodeScalars)
        let plain = !u.isEmpty && u.first != " " && u.last != " "
            && !u.contains(where: { special.contains($0) || $0.value < 0x20 || $0.value == 0x7F || $0.properties.isWhitespace && $0 != " " })
            && u.first != "-" && u.first != "?" && s != "~" && s != "null" && s != "---" && s != "..." && s != "[]" && s != "{}"
            && !(u.first.map { $0.properties.generalCategory == .nonspacingMark || $0.properties.generalCategory == .enclosingMark } ?? false)
        if plain { return s }
        var out = "\""
        for c in u {
            switch c {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if c.value < 0x20 || c.value == 0x7F || (c.properties.isWhitespace && c != " ") {
                    out += "\\u" + String(repeating: "0", count: 4 - String(c.value, radix: 16).count) + String(c.value, radix: 16)
                } else if c.value > 0xFFFF {
                    out.unicodeScalars.append(c)
                } else {
                    out.unicodeScalars.append(c)
                }
            }
        }
        return out + "\""
    }
}
