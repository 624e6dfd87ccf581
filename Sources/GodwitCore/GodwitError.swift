import Foundation

/// The one error type users see. It always says what went wrong and what to do about it,
/// and carries the context that makes a failure diagnosable (host, phase, CRIU's log line).
public struct GodwitError: Error, CustomStringConvertible, Sendable {
    public var message: String
    /// What the user can do about it; printed as "hint: ...".
    public var hint: String?
    /// Ordered context pairs such as ("host", "h2"), ("phase", "restore"), ("criu", "<log line>").
    public var context: [(String, String)]

    public init(_ message: String, hint: String? = nil, context: [(String, String)] = []) {
        self.message = message
        self.hint = hint
        self.context = context
    }

    /// Adds context without losing what was there, so callers up the stack can say where
    /// they were (e.g. which host) without re-wording the original error.
    public func with(_ key: String, _ value: String) -> GodwitError {
        var copy = self
        copy.context.append((key, value))
        return copy
    }

    public var description: String {
        var text = message
        if !context.isEmpty {
            text += " (" + context.map { "\($0.0): \($0.1)" }.joined(separator: ", ") + ")"
        }
        if let hint { text += "\nhint: \(hint)" }
        return text
    }
}

extension GodwitError {
    /// Errors thrown by Foundation or the C shim are wrapped so every error reaching the
    /// user has the same shape.
    public static func wrap(_ error: Error, doing what: String) -> GodwitError {
        if let error = error as? GodwitError { return error.with("while", what) }
        return GodwitError("\(what): \(error)")
    }

    /// A failed syscall, with errno spelled out.
    public static func errno(_ call: String, _ code: Int32 = Glibc.errno, hint: String? = nil) -> GodwitError {
        GodwitError("\(call) failed: \(String(cString: strerror(code))) (errno \(code))", hint: hint)
    }
}
