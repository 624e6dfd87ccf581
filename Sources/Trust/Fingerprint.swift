import Crypto
import Foundation
import GodwitCore

/// SHA-256 of a certificate's DER encoding, as lowercase hex without separators (LXD's form).
/// Trust is decided by fingerprint alone: certificates are self-signed, so there is no CA whose
/// signature could vouch for them; what matters is that the peer proved (in the TLS handshake)
/// that it holds the key of exactly the certificate we registered or pinned.
public enum Fingerprint {
    public static func of(der: some DataProtocol) -> String {
        hex(SHA256.hash(data: Data(der)))
    }

    public static func hex(_ bytes: some Sequence<UInt8>) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    /// Accepts what users paste: upper case, colons ("AB:CD:..."), spaces. Returns nil when the
    /// result is not 64 hex digits, so a typo never silently pins or removes the wrong thing.
    public static func normalize(_ text: String) -> String? {
        let cleaned = text.lowercased().filter { $0 != ":" && !$0.isWhitespace }
        guard cleaned.count == 64, cleaned.allSatisfy(\.isHexDigit) else { return nil }
        return cleaned
    }

    /// Parses a user-supplied fingerprint or fails with a hint.
    public static func parse(_ text: String) throws -> String {
        guard let value = normalize(text) else {
            throw GodwitError("not a SHA-256 certificate fingerprint: '\(text)'",
                              hint: "a fingerprint is 64 hex digits, as `godwit trust list` prints it")
        }
        return value
    }
}

/// Random bytes and their text forms, one place so every secret Godwit makes has the same
/// strength (32 bytes from the system CSPRNG) and the same encoding.
enum SecretBytes {
    static func random(count: Int = 32) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<count).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// Hash of a secret as stored server-side: a leaked state file then reveals no usable secret.
    static func hash(_ secret: some DataProtocol) -> [UInt8] {
        Array(SHA256.hash(data: Data(secret)))
    }

    /// Equal-length comparison whose time does not depend on where the inputs differ, so an
    /// attacker cannot learn a secret (or its hash) byte by byte from response times.
    static func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}

/// base64url without padding (RFC 4648 §5): tokens travel on command lines and in URLs.
public enum Base64URL {
    public static func encode(_ bytes: some DataProtocol) -> String {
        Data(bytes).base64EncodedString()
            .replacingOccurrences(of: "+", with: "-")
            .replacingOccurrences(of: "/", with: "_")
            .replacingOccurrences(of: "=", with: "")
    }

    public static func decode(_ text: String) -> Data? {
        var base64 = text.trimmingCharacters(in: .whitespacesAndNewlines)
            .replacingOccurrences(of: "-", with: "+")
            .replacingOccurrences(of: "_", with: "/")
        guard base64.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "+" || $0 == "/" }) else { return nil }
        while base64.count % 4 != 0 { base64.append("=") }
        return Data(base64Encoded: base64)
    }
}
