import Foundation
import Logging

/// godwitd's log lines under systemd: stderr goes to the journal there, and a `<N>` prefix
/// (sd-daemon(3)) gives each line its priority, so `journalctl -p warning -u godwitd`
/// works. systemd says a stream is the journal's through JOURNAL_STREAM (device:inode of
/// the stream it gave us); elsewhere the default handler's format stays.
public enum DaemonLogging {
    public static func bootstrap(environment: [String: String] = ProcessInfo.processInfo.environment) {
        guard let stream = environment["JOURNAL_STREAM"], isStandardError(stream) else { return }
        LoggingSystem.bootstrap { label in JournalLogHandler(label: label) }
    }

    /// JOURNAL_STREAM is "DEVICE:INODE" of the journal's stream; stderr must be it (a
    /// child that inherited the variable but writes elsewhere keeps plain lines).
    static func isStandardError(_ value: String) -> Bool {
        let parts = value.split(separator: ":")
        var st = stat()
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]), fstat(2, &st) == 0 else { return false }
        return UInt64(st.st_dev) == device && UInt64(st.st_ino) == inode
    }
}

/// One line per message: "<priority>label: message key=value ...".
public struct JournalLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String

    public init(label: String) { self.label = label }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    /// syslog priorities (sd-daemon.h SD_ERR ... SD_DEBUG).
    static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .critical: 2
        case .error: 3
        case .warning: 4
        case .notice: 5
        case .info: 6
        case .debug, .trace: 7
        }
    }

    public func log(event: LogEvent) {
        var fields = metadata
        if let extra = event.metadata { fields.merge(extra) { $1 } }
        let suffix = fields.isEmpty ? "" : " " + fields.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        // One write per line, newlines inside the message flattened: the journal splits on them.
        let text = "\(event.message)\(suffix)".replacingOccurrences(of: "\n", with: " ")
        FileHandle.standardError.write(Data("<\(Self.priority(event.level))>\(label): \(text)\n".utf8))
    }
}
