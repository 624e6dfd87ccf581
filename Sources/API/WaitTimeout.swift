import Foundation
import GodwitCore

/// Timeouts in seconds as clients give them (`/wait?timeout=S`, a stop's `timeout`). LXD's
/// convention: a negative value (or none) waits as long as it takes. Checked here, once,
/// because converting an arbitrary number to a Duration traps: `1e17` seconds overflows
/// the clock's 64-bit seconds, and `nan` or `inf` are numbers to Double(String).
public enum WaitTimeout {
    /// 30 days: longer than any operation runs, far below what the clocks can add.
    public static let maximumSeconds = 30 * 86_400

    /// nil: wait as long as it takes.
    public static func parse(_ text: String?) throws -> Duration? {
        guard let text else { return nil }
        guard let seconds = Double(text.trimmingCharacters(in: .whitespaces)) else {
            throw invalid(text, "not a number")
        }
        return try check(seconds, as: text)
    }

    public static func check(_ seconds: Double, as text: String? = nil) throws -> Duration? {
        let shown = text ?? "\(seconds)"
        guard seconds.isFinite else { throw invalid(shown, "not a finite number") }
        if seconds < 0 { return nil }
        guard seconds <= Double(maximumSeconds) else { throw invalid(shown, "more than \(maximumSeconds) s (30 days)") }
        // Whole milliseconds: both factors are bounded above, so the product fits.
        return .milliseconds(Int64((seconds * 1000).rounded()))
    }

    /// A whole number of seconds (a stop's timeout); negative means the default.
    public static func check(seconds: Int) throws -> Duration? {
        if seconds < 0 { return nil }
        guard seconds <= maximumSeconds else { throw invalid(String(seconds), "more than \(maximumSeconds) s (30 days)") }
        return .seconds(seconds)
    }

    static func invalid(_ text: String, _ why: String) -> GodwitError {
        GodwitError("invalid timeout '\(text)': \(why)",
                    hint: "give seconds from 0 to \(maximumSeconds), or -1 to wait as long as it takes")
    }
}
