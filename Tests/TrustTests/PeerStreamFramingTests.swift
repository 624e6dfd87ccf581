import Foundation
import GodwitCore
import Testing
@testable import Trust

/// The peer-stream wire format on plain bytes (what the bridge feeds it).
@Suite struct PeerStreamFramingTests {
    func firstLine(_ bytes: [UInt8]) throws -> (line: String, consumed: Int)? {
        try bytes.withUnsafeBytes { try PeerStreamFraming.firstLine(in: $0) }
    }

    @Test func headerLinesAreBoundedAndUTF8() throws {
        #expect(try firstLine(Array("{}".utf8)) == nil)
        let found = try #require(try firstLine(Array("{\"a\":1}\nrest".utf8)))
        #expect(found.line == "{\"a\":1}" && found.consumed == 8)
        // Exactly the limit is fine; one byte more, with or without a newline yet, is not.
        let limit = PeerStreamFraming.maxHeaderLength
        #expect(try firstLine([UInt8](repeating: 0x61, count: limit) + [0x0a])?.consumed == limit + 1)
        #expect(try firstLine([UInt8](repeating: 0x61, count: limit)) == nil)
        #expect(throws: GodwitError.self) { try firstLine([UInt8](repeating: 0x61, count: limit + 1)) }
        #expect(throws: GodwitError.self) { try firstLine([UInt8](repeating: 0x61, count: limit + 1) + [0x0a]) }
        #expect(throws: GodwitError.self) { try firstLine([0xff, 0xfe, 0x0a]) }
    }

    @Test func headerFieldsMustBeShortWords() throws {
        let good = try PeerStreamHeader.parse(#"{"migration":"0f3c-aa.b","secret":"q_-AZ09=","channel":"rsync"}"#)
        #expect(good == PeerStreamHeader(migration: "0f3c-aa.b", secret: "q_-AZ09=", channel: "rsync"))
        for bad in [
            #"{"migration":"","secret":"s","channel":"rsync"}"#,
            #"{"migration":"m","secret":"s","channel":"rs\nync"}"#,
            #"{"migration":"m/../x","secret":"s","channel":"rsync"}"#,
            #"{"migration":"m","secret":"s p","channel":"rsync"}"#,
            #"{"migration":"m","secret":"s","channel":"é"}"#,
            "{\"migration\":\"\(String(repeating: "m", count: 129))\",\"secret\":\"s\",\"channel\":\"c\"}",
            #"{"migration":"m","secret":"s"}"#,
            #"{"migration":7,"secret":"s","channel":"c"}"#,
            "not json",
        ] {
            #expect(throws: GodwitError.self, "\(bad)") { try PeerStreamHeader.parse(Substring(bad)) }
        }
        #expect(PeerStreamAnswer.parse(#"{"ok":true}"#)?.ok == true)
        #expect(PeerStreamAnswer.parse(#"{"status":1e400}"#) == nil)
    }

    /// Decodes `bytes` fed in pieces of `piece` bytes; returns the payload and whether the
    /// end frame came.
    func decode(_ bytes: [UInt8], piece: Int) throws -> (payload: [UInt8], ended: Bool) {
        var decoder = PeerStreamFrameDecoder()
        var payload: [UInt8] = []
        var offset = 0
        while offset < bytes.count {
            let chunk = Array(bytes[offset..<min(bytes.count, offset + piece)])
            var at = 0
            while at < chunk.count {
                let step = try chunk[at...].withUnsafeBytes { try decoder.step($0) }
                switch step {
                case .payload(let n): payload += chunk[at..<(at + n)]; at += n
                case .prefix(let n), .end(let n): at += n
                }
            }
            offset += piece
        }
        return (payload, decoder.ended)
    }

    func frame(_ payload: [UInt8]) -> [UInt8] {
        withUnsafeBytes(of: UInt32(payload.count).bigEndian) { Array($0) } + payload
    }

    @Test func framesDecodeWhateverTheChunking() throws {
        let stream = frame([1, 2, 3]) + frame(Array(repeating: 9, count: 1000)) + frame([])
        for piece in [1, 2, 3, 5, 1003, 4096] {
            let (payload, ended) = try decode(stream, piece: piece)
            #expect(payload == [1, 2, 3] + Array(repeating: 9, count: 1000) && ended, "pieces of \(piece)")
        }
        #expect(try decode(frame([1]), piece: 2) == ([1], false))
    }

    @Test func oversizedFramesAndTrailingDataAreErrors() {
        let tooBig = withUnsafeBytes(of: UInt32(PeerStreamFraming.maxFrame + 1).bigEndian) { Array($0) }
        #expect(throws: GodwitError.self) { try decode(tooBig, piece: 4) }
        #expect(throws: GodwitError.self) { try decode([0xff, 0xff, 0xff, 0xff], piece: 1) }
        #expect(throws: GodwitError.self) { try decode(frame([]) + [0], piece: 8) }
        var decoder = PeerStreamFrameDecoder()
        #expect((try? [UInt8]().withUnsafeBytes { try decoder.step($0) }) == .prefix(0))
    }

    /// Through a real listener: a header whose fields are not short words is refused with
    /// the reason, before authorize sees it.
    @Test func aListenerRefusesMalformedHeaderFields() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let error = await #expect(throws: GodwitError.self) {
            _ = try await pair.open(channel: "rsync\n{\"ok\":true}")
        }
        #expect(error?.message.contains("refused the stream: malformed peer stream header: field 'channel'") == true, "\(String(describing: error))")
        #expect(pair.headers.withLockedValue { $0.isEmpty })
    }

    /// The data port comes from the remote's answer to `POST /1.0/migrations`.
    @Test func aDataPortOutsideTCPsRangeIsAnError() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        for port in [0, -1, 65_536, Int.max] {
            let error = await #expect(throws: GodwitError.self) {
                _ = try await PeerStream.open(remote: pair.remote, identity: pair.client, port: port,
                                              header: PeerStreamHeader(migration: "m1", secret: "s", channel: "rsync"))
            }
            #expect(error?.message.contains("named data port \(port), which is not a TCP port") == true, "\(String(describing: error))")
        }
    }
}
