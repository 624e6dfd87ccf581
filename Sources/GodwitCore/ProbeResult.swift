/// The outcome of measuring one host capability by exercising it (never by reading a
/// config file): whether it works, and one line saying what was seen or why not.
public struct ProbeResult: Codable, Sendable, Equatable {
    public var available: Bool
    public var detail: String

    public init(available: Bool, detail: String) {
        self.available = available
        self.detail = detail
    }

    public static func yes(_ detail: String) -> ProbeResult { ProbeResult(available: true, detail: detail) }
    public static func no(_ detail: String) -> ProbeResult { ProbeResult(available: false, detail: detail) }
}
