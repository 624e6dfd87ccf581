import Foundation
import Testing
import X509
@testable import Trust

@Suite struct HostIdentityTests {
    @Test func generatesOnceAndReloadsTheSameIdentity() throws {
        let dir = try TemporaryDirectory("identity")
        defer { dir.remove() }
        let first = try HostIdentity.loadOrCreate(in: dir.url, hostName: "h1", addresses: ["10.77.0.1", "h1.lab", "fd00::1"])
        let second = try HostIdentity.loadOrCreate(in: dir.url, hostName: "other-name", addresses: [])
        #expect(first.fingerprint == second.fingerprint)
        #expect(first.certificatePEM == second.certificatePEM)
        #expect(second.commonName == "h1")
        #expect(first.fingerprint.count == 64)
        #expect(Fingerprint.normalize(first.fingerprint) == first.fingerprint)

        let keyPath = dir.url.appendingPathComponent(HostIdentity.keyFile).path
        let mode = try FileManager.default.attributesOfItem(atPath: keyPath)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func certificateHasTheRequestedNamesAndLongValidity() throws {
        let identity = try HostIdentity.generate(hostName: "h2", addresses: ["127.0.0.1", "h2.example"])
        let sans = try #require(try identity.certificate.extensions.subjectAlternativeNames)
        #expect(sans.contains(.dnsName("h2.example")))
        #expect(sans.contains(.dnsName("h2")))
        #expect(sans.contains { if case .ipAddress(let bytes) = $0 { return Array(bytes.bytes) == [127, 0, 0, 1] }; return false })
        #expect(identity.certificate.notValidAfter.timeIntervalSinceNow > 9 * 365 * 86400)
        let constraints = try #require(try identity.certificate.extensions.basicConstraints)
        #expect(constraints == .notCertificateAuthority)
        // The PEM parses back to the same fingerprint (what peers compute).
        #expect(try PeerCertificate(pem: identity.certificatePEM).fingerprint == identity.fingerprint)
        // Two hosts never share an identity.
        #expect(try HostIdentity.generate(hostName: "h2").fingerprint != identity.fingerprint)
    }

    @Test func looseKeyPermissionsAreTightenedOnLoad() throws {
        let dir = try TemporaryDirectory("identity-mode")
        defer { dir.remove() }
        _ = try HostIdentity.loadOrCreate(in: dir.url, hostName: "h1")
        let keyPath = dir.url.appendingPathComponent(HostIdentity.keyFile).path
        chmod(keyPath, 0o644)
        _ = try HostIdentity.loadOrCreate(in: dir.url, hostName: "h1")
        let mode = try FileManager.default.attributesOfItem(atPath: keyPath)[.posixPermissions] as? Int
        #expect(mode == 0o600)
    }

    @Test func aCertificateWithoutItsKeyIsAnErrorNotANewIdentity() throws {
        let dir = try TemporaryDirectory("identity-nokey")
        defer { dir.remove() }
        _ = try HostIdentity.loadOrCreate(in: dir.url, hostName: "h1")
        try FileManager.default.removeItem(at: dir.url.appendingPathComponent(HostIdentity.keyFile))
        let error = #expect(throws: GodwitErrorProxy.self) {
            do { _ = try HostIdentity.loadOrCreate(in: dir.url, hostName: "h1") } catch { throw GodwitErrorProxy(error) }
        }
        #expect(error?.text.contains("private key") == true)
        #expect(error?.text.contains("hint:") == true)
    }

    @Test func mismatchedKeyAndCertificateAreRefused() throws {
        let a = try TemporaryDirectory("identity-a"), b = try TemporaryDirectory("identity-b")
        defer { a.remove(); b.remove() }
        _ = try HostIdentity.loadOrCreate(in: a.url, hostName: "a")
        _ = try HostIdentity.loadOrCreate(in: b.url, hostName: "b")
        try FileManager.default.removeItem(at: a.url.appendingPathComponent(HostIdentity.keyFile))
        try FileManager.default.copyItem(at: b.url.appendingPathComponent(HostIdentity.keyFile),
                                         to: a.url.appendingPathComponent(HostIdentity.keyFile))
        let error = #expect(throws: GodwitErrorProxy.self) {
            do { _ = try HostIdentity.loadOrCreate(in: a.url, hostName: "a") } catch { throw GodwitErrorProxy(error) }
        }
        #expect(error?.text.contains("do not belong together") == true)
    }
}

/// Any error, with its printed form, so tests can check message and hint.
struct GodwitErrorProxy: Error {
    let text: String
    init(_ error: any Error) { text = String(describing: error) }
}
