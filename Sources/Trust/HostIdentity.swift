import Crypto
import Foundation
import GodwitCore
import NIOSSL
import SwiftASN1
import X509

/// This host's TLS identity: one self-signed certificate and its P-256 key, generated once in
/// the state directory and then reused forever, because peers pin its fingerprint (a new
/// certificate would make every remote that added us refuse to talk). The same identity is
/// our server certificate (peers pin it) and our client certificate (peers trust it).
public struct HostIdentity: Sendable {
    public static let certificateFile = "server.crt"
    public static let keyFile = "server.key"
    /// Long-lived on purpose: trust is by fingerprint, so expiry would only break pinned
    /// peers without adding security (LXD uses 10 years too).
    public static let validity: TimeInterval = 10 * 365 * 86400

    public let certificate: Certificate
    public let certificatePEM: String
    /// SHA-256 of the certificate's DER, lowercase hex.
    public let fingerprint: String
    /// Kept as PEM: CryptoKit's key type is not Sendable, and the identity is shared by
    /// every connection.
    let privateKeyPEM: String

    /// The certificate's common name (the host name it was generated for).
    public var commonName: String {
        PeerCertificate.commonName(certificate) ?? ""
    }

    /// NIOSSL's forms, for TLS configurations.
    public func nioCertificate() throws -> NIOSSLCertificate {
        try NIOSSLCertificate(bytes: Array(certificatePEM.utf8), format: .pem)
    }

    func nioPrivateKey() throws -> NIOSSLPrivateKey {
        try NIOSSLPrivateKey(bytes: Array(privateKeyPEM.utf8), format: .pem)
    }

    init(certificate: Certificate, privateKey: P256.Signing.PrivateKey) throws {
        self.certificate = certificate
        privateKeyPEM = privateKey.pemRepresentation
        certificatePEM = try certificate.serializeAsPEM().pemString
        var serializer = DER.Serializer()
        try serializer.serialize(certificate)
        fingerprint = Fingerprint.of(der: serializer.serializedBytes)
    }

    /// Loads the identity from `directory`, generating it on first use.
    /// - Parameters:
    ///   - hostName: the certificate's CN (only used when generating).
    ///   - addresses: IP addresses and DNS names for the subjectAltName (only used when generating;
    ///     peers check the fingerprint, not the name, so a host that changes address keeps working).
    public static func loadOrCreate(in directory: URL, hostName: String, addresses: [String] = [],
                                    now: Date = Date()) throws -> HostIdentity {
        let certURL = directory.appendingPathComponent(certificateFile)
        let keyURL = directory.appendingPathComponent(keyFile)
        let certData = try AtomicFile.read(certURL)
        let keyData = try AtomicFile.read(keyURL)
        switch (certData, keyData) {
        case (let cert?, let key?):
            return try load(certificatePEM: String(decoding: cert, as: UTF8.self),
                            keyPEM: String(decoding: key, as: UTF8.self), keyURL: keyURL)
                .tightening(keyURL)
        case (.some, nil):
            // Peers may have pinned this certificate; silently replacing it would break them
            // with a confusing error, so say exactly what happened instead.
            throw GodwitError("\(certURL.path) exists but its private key \(keyURL.path) is missing",
                              hint: "restore the key from a backup, or delete \(certURL.path) to make a new identity (every remote that added this host must then be added again)")
        case (nil, _):
            // No certificate was ever written, so nobody can have pinned one: a key left
            // alone by a crash between the two writes is simply replaced.
            let identity = try generate(hostName: hostName, addresses: addresses, now: now)
            // Key first: a certificate on disk always has its key next to it.
            try AtomicFile.write(Data(identity.privateKeyPEM.utf8), to: keyURL, mode: 0o600)
            try AtomicFile.write(Data(identity.certificatePEM.utf8), to: certURL, mode: 0o644)
            return identity
        }
    }

    /// A fresh identity in memory (tests, and the first start).
    public static func generate(hostName: String, addresses: [String] = [], now: Date = Date()) throws -> HostIdentity {
        let key = P256.Signing.PrivateKey()
        let name = try DistinguishedName {
            OrganizationName("Godwit")
            CommonName(hostName)
        }
        var sans: [GeneralName] = []
        for address in addresses {
            if let bytes = IPAddressBytes.parse(address) {
                sans.append(.ipAddress(ASN1OctetString(contentBytes: ArraySlice(bytes))))
            } else {
                sans.append(.dnsName(address))
            }
        }
        if !addresses.contains(hostName), IPAddressBytes.parse(hostName) == nil { sans.append(.dnsName(hostName)) }
        let extensions = try Certificate.Extensions {
            // Not a CA: peers use the pinned certificate as their only trust root, and a
            // non-CA root cannot vouch for any other certificate, even one signed with our key.
            Critical(BasicConstraints.notCertificateAuthority)
            // No KeyUsage on purpose: BoringSSL treats a certificate whose KeyUsage lacks
            // keyCertSign as not self-signed, and then cannot use it as its own trust root;
            // RFC 5280 forbids keyCertSign on a non-CA. Extended key usage still limits it to TLS.
            try ExtendedKeyUsage([.serverAuth, .clientAuth])
            SubjectAlternativeNames(sans)
            SubjectKeyIdentifier(hash: Certificate.PublicKey(key.publicKey))
        }
        let certificate = try Certificate(
            version: .v3,
            serialNumber: Certificate.SerialNumber(),
            publicKey: Certificate.PublicKey(key.publicKey),
            // An hour of slack: a peer whose clock is a little behind must not see a
            // certificate that is "not yet valid".
            notValidBefore: now.addingTimeInterval(-3600),
            notValidAfter: now.addingTimeInterval(validity),
            issuer: name,
            subject: name,
            signatureAlgorithm: .ecdsaWithSHA256,
            extensions: extensions,
            issuerPrivateKey: Certificate.PrivateKey(key))
        return try HostIdentity(certificate: certificate, privateKey: key)
    }

    static func load(certificatePEM: String, keyPEM: String, keyURL: URL) throws -> HostIdentity {
        let certificate: Certificate
        let key: P256.Signing.PrivateKey
        do {
            certificate = try Certificate(pemEncoded: certificatePEM)
        } catch {
            throw GodwitError("cannot parse the host certificate: \(error)",
                              hint: "the file is damaged; restore it from a backup")
                .with("file", keyURL.deletingLastPathComponent().appendingPathComponent(certificateFile).path)
        }
        do {
            key = try P256.Signing.PrivateKey(pemRepresentation: keyPEM)
        } catch {
            throw GodwitError("cannot parse the host private key (expected P-256): \(error)",
                              hint: "the file is damaged; restore it from a backup").with("file", keyURL.path)
        }
        guard certificate.publicKey == Certificate.PublicKey(key.publicKey) else {
            throw GodwitError("the host certificate and private key do not belong together",
                              hint: "restore the matching pair from a backup; mixing files from two hosts breaks TLS")
                .with("file", keyURL.path)
        }
        return try HostIdentity(certificate: certificate, privateKey: key)
    }

    /// A key readable by others is no longer private; restoring 0600 is always what the
    /// owner wants, so do it rather than refuse to start.
    func tightening(_ keyURL: URL) throws -> HostIdentity {
        var info = stat()
        if stat(keyURL.path, &info) == 0, info.st_mode & 0o077 != 0 {
            guard chmod(keyURL.path, 0o600) == 0 else { throw GodwitError.errno("chmod(\(keyURL.path), 0600)") }
        }
        return self
    }
}

/// IPv4/IPv6 text to the network-order bytes X.509 wants in an iPAddress SAN.
enum IPAddressBytes {
    static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
