/// Left-aligned columns for human output (`check`, `list`, `lab status`, reports).
public struct TextTable {
    public var header: [String]?
    public var rows: [[String]] = []

    public init(header: [String]? = nil) { self.header = header }

    public mutating func add(_ row: [String]) { rows.append(row) }

    public func render(indent: String = "") -> String {
        let all = (header.map { [$0] } ?? []) + rows
        let columns = all.map(\.count).max() ?? 0
        var widths = [Int](repeating: 0, count: columns)
        for row in all { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ row: [String]) -> String {
            let cells = row.enumerated().map { i, cell in
                i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
            }
            return indent + cells.joined(separator: "  ")
        }
        var out = all.map(line)
        if header != nil {
            out.insert(indent + widths.map { String(repeating: "-", count: $0) }.joined(separator: "  "), at: 1)
        }
        return out.joined(separator: "\n")
    }

    /// A Markdown table (benchmarks print these so results paste into notes).
    public func markdown() -> String {
        guard let header else { return rows.map { "| " + $0.joined(separator: " | ") + " |" }.joined(separator: "\n") }
        var out = ["| " + header.joined(separator: " | ") + " |", "|" + header.map { _ in "---|" }.joined()]
        out += rows.map { "| " + $0.joined(separator: " | ") + " |" }
        return out.joined(separator: "\n")
    }
}
