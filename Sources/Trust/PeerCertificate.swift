import Foundation
import GodwitCore
import NIOSSL
import SwiftASN1
import X509

/// The certificate a TLS peer presented, reduced to what trust decisions need. Built from
/// the handshake (so the peer proved it holds the key), never from a request body. Cheap to
/// make (one hash), because the HTTPS layer makes one per request.
public struct PeerCertificate: Sendable, Equatable {
    public let fingerprint: String
    public let der: [UInt8]

    public init(der: [UInt8]) {
        self.der = der
        fingerprint = Fingerprint.of(der: der)
    }

    public init(_ certificate: NIOSSLCertificate) throws {
        self.init(der: try certificate.toDERBytes())
    }

    public init(pem: String) throws {
        let certificate: Certificate
        do {
            certificate = try Certificate(pemEncoded: pem)
        } catch {
            throw GodwitError("not a PEM certificate: \(error)", hint: "pass the contents of a server.crt file")
        }
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        self.init(der: serializer.serializedBytes)
    }

    /// PEM text of the DER (what trust stores and remote lists keep).
    public var pem: String {
        let base64 = Data(der).base64EncodedString()
        var lines = ["-----BEGIN CERTIFICATE-----"]
        var index = base64.startIndex
        while index < base64.endIndex {
            let end = base64.index(index, offsetBy: 64, limitedBy: base64.endIndex) ?? base64.endIndex
            lines.append(String(base64[index..<end]))
            index = end
        }
        lines.append("-----END CERTIFICATE-----")
        return lines.joined(separator: "\n") + "\n"
    }

    /// The subject's CN (the peer's host name, for Godwit certificates); informational only.
    public var commonName: String? {
        (try? Certificate(derEncoded: der)).flatMap(Self.commonName)
    }

    static func commonName(_ certificate: Certificate) -> String? {
        for rdn in certificate.subject {
            for attribute in rdn where attribute.type == .RDNAttributeType.commonName {
                return String(describing: attribute.value)
            }
        }
        return nil
    }
}
