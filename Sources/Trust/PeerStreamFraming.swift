import Foundation
import GodwitCore

// The peer-stream wire format as plain values over bytes, apart from NIO, so that what a
// peer can send is checked in one place that tests and the fuzzer (Fuzz/) drive directly.
// The bridge (PeerStreamBridge) feeds it what arrives; see PeerStreamWire for the format.

/// What a peer says right after the TLS handshake of a data channel: which migration the
/// channel belongs to, that migration's secret, and what the channel carries ("rsync",
/// "images", "page-server"...). One JSON line, at most `PeerStreamFraming.maxHeaderLength` bytes.
public struct PeerStreamHeader: Codable, Sendable, Equatable {
    public var migration: String
    public var secret: String
    public var channel: String

    public init(migration: String, secret: String, channel: String) {
        self.migration = migration; self.secret = secret; self.channel = channel
    }

    /// Decodes and checks a header line. The fields end up in logs, error messages and
    /// dictionary lookups: they must be short words, not arbitrary text.
    public static func parse(_ line: Substring) throws -> PeerStreamHeader {
        let header: PeerStreamHeader
        do {
            header = try JSONDecoder().decode(PeerStreamHeader.self, from: Data(line.utf8))
        } catch {
            throw GodwitError("malformed peer stream header: \(error)")
        }
        try check("migration", header.migration, maxLength: 128, extra: "._-")
        try check("channel", header.channel, maxLength: 64, extra: "_-")
        try check("secret", header.secret, maxLength: 256, extra: "_-=")
        return header
    }

    private static func check(_ field: String, _ value: String, maxLength: Int, extra: String) throws {
        let allowed = value.utf8.allSatisfy { b in
            (b >= UInt8(ascii: "a") && b <= UInt8(ascii: "z")) || (b >= UInt8(ascii: "A") && b <= UInt8(ascii: "Z"))
                || (b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9")) || extra.utf8.contains(b)
        }
        guard !value.isEmpty, value.utf8.count <= maxLength, allowed else {
            throw GodwitError("malformed peer stream header: field '\(field)' must be 1 to \(maxLength) letters, digits or \(extra.map { "'\($0)'" }.joined(separator: " "))")
        }
    }
}

/// The listener's one-line answer: `{"ok":true}` or `{"error":"...","status":403}`.
struct PeerStreamAnswer: Codable, Sendable {
    var ok: Bool?
    var error: String?
    var status: Int?

    static func parse(_ line: Substring) -> PeerStreamAnswer? {
        try? JSONDecoder().decode(PeerStreamAnswer.self, from: Data(line.utf8))
    }
}

enum PeerStreamFraming {
    static let maxHeaderLength = 4096
    /// Largest payload per frame: big frames keep per-frame overhead negligible.
    static let maxFrame = 256 * 1024

    /// The first line of `bytes` (everything received so far) and the bytes it took,
    /// newline included; nil while there is no newline yet. Throws once the line is longer
    /// than `maxHeaderLength` (with or without its newline) or is not UTF-8.
    static func firstLine(in bytes: UnsafeRawBufferPointer) throws -> (line: String, consumed: Int)? {
        guard let newline = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            if bytes.count > maxHeaderLength { throw tooLong }
            return nil
        }
        guard newline <= maxHeaderLength else { throw tooLong }
        guard let line = String(validating: bytes[..<newline], as: UTF8.self) else {
            throw GodwitError("first line is not UTF-8")
        }
        return (line, newline + 1)
    }

    static var tooLong: GodwitError { GodwitError("first line longer than \(maxHeaderLength) bytes") }
}

/// Decodes the frames `[u32 big-endian length][length bytes]` of one direction; a frame of
/// length 0 ends it. Feed it the bytes as they come: each `step` consumes some of them.
struct PeerStreamFrameDecoder {
    enum Step: Equatable {
        /// The next `count` bytes are payload for the local side.
        case payload(Int)
        /// `count` bytes of a length prefix were consumed.
        case prefix(Int)
        /// The end frame was read (`count` bytes consumed): nothing may follow.
        case end(Int)
    }

    private var prefix: UInt32 = 0
    private var prefixBytes = 0
    /// Payload bytes of the current frame still to come.
    private(set) var remaining = 0
    private(set) var ended = false

    /// Consumes from the start of `bytes`; throws on a frame over `maxFrame`
    /// or anything after the end frame.
    mutating func step(_ bytes: UnsafeRawBufferPointer) throws -> Step {
        if bytes.isEmpty { return .prefix(0) }
        if remaining > 0 {
            let count = min(remaining, bytes.count)
            remaining -= count
            return .payload(count)
        }
        if ended { throw GodwitError("data after the end of stream") }
        let take = min(4 - prefixBytes, bytes.count)
        for b in bytes[..<take] { prefix = prefix << 8 | UInt32(b) }
        prefixBytes += take
        guard prefixBytes == 4 else { return .prefix(take) }
        let length = prefix
        prefix = 0
        prefixBytes = 0
        if length == 0 {
            ended = true
            return .end(take)
        }
        guard length <= PeerStreamFraming.maxFrame else {
            throw GodwitError("frame of \(length) bytes exceeds \(PeerStreamFraming.maxFrame)")
        }
        remaining = Int(length)
        return .prefix(take)
    }
}
