import Foundation
import GodwitCore

// Target peer-stream: what a peer sends on a migration data channel after TLS, through
// Sources/Trust/PeerStreamFraming.swift (compiled in): the header line (or the answer
// line, on the client), then frames.
//
// Input: [u8 piece size][the stream]. The frames are decoded twice, in pieces of the given
// size and in one go: both must give the same payload, end and error.

struct Decoded: Equatable {
    var payload: [UInt8] = []
    var ended = false
    var error: String?
}

func decode(_ bytes: [UInt8], piece: Int) -> Decoded {
    var decoder = PeerStreamFrameDecoder()
    var out = Decoded()
    var offset = 0
    do {
        while offset < bytes.count {
            let chunk = bytes[offset..<min(bytes.count, offset + piece)]
            var at = chunk.startIndex
            while at < chunk.endIndex {
                let step = try chunk[at...].withUnsafeBytes { try decoder.step($0) }
                switch step {
                case .payload(let n):
                    fuzzCheck(n > 0 && n <= chunk.endIndex - at, "payload step of \(n)")
                    out.payload += chunk[at..<(at + n)]
                    at += n
                case .prefix(let n), .end(let n):
                    fuzzCheck(n > 0 && n <= 4 && n <= chunk.endIndex - at, "prefix step of \(n)")
                    at += n
                }
            }
            offset += piece
        }
    } catch {
        out.error = (error as? GodwitError)?.message ?? "\(error)"
    }
    out.ended = decoder.ended
    return out
}

func fuzzOne(_ bytes: [UInt8]) {
    var input = FuzzBytes(bytes)
    let piece = Int(input.integer(UInt8.self)) + 1
    var stream = input.rest
    let found = try? stream.withUnsafeBytes { try PeerStreamFraming.firstLine(in: $0) }
    if let found = found ?? nil {
        fuzzCheck(found.consumed <= PeerStreamFraming.maxHeaderLength + 1 && found.consumed <= stream.count, "line of \(found.consumed)")
        fuzzCheck(!found.line.utf8.contains(UInt8(ascii: "\n")), "newline inside the line")
        if let header = try? PeerStreamHeader.parse(Substring(found.line)) {
            for field in [header.migration, header.secret, header.channel] {
                fuzzCheck(!field.isEmpty && field.utf8.count <= 256 && field.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7f },
                          "header field \(field.debugDescription)")
            }
        }
        _ = PeerStreamAnswer.parse(Substring(found.line))
        stream.removeFirst(found.consumed)
    }
    let whole = decode(stream, piece: max(1, stream.count))
    let pieces = decode(stream, piece: piece)
    fuzzCheck(whole == pieces, "decoding in pieces of \(piece) differs: \(whole.error ?? "-") vs \(pieces.error ?? "-")")
    fuzzCheck(whole.payload.count <= stream.count, "more payload than input")
}

func fuzzSeeds() -> [String: [UInt8]] {
    func frame(_ payload: [UInt8]) -> [UInt8] { withUnsafeBytes(of: UInt32(payload.count).bigEndian) { Array($0) } + payload }
    let header = Array(#"{"channel":"images","migration":"3f2a9c1e-0b7d-4e44-9a51-6c0d2f1e8b7a","secret":"x2Vn_Qk-8aZ0"}"#.utf8) + [0x0a]
    return [
        "header": [3] + header + frame(Array("inventory.img".utf8)) + frame([1, 2, 3]) + frame([]),
        "answer": [0] + Array(#"{"ok":true}"#.utf8) + [0x0a] + frame([0xff]) + frame([]),
        "refusal": [7] + Array(#"{"error":"migration secret refused","status":403}"#.utf8) + [0x0a],
        "frames": [1] + frame([UInt8](repeating: 7, count: 300)) + frame([]),
    ]
}
