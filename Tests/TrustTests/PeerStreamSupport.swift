import Foundation
import NIOConcurrencyHelpers
@testable import Trust

/// Two hosts in one process: a listener ("server") trusting "client", with migration secrets,
/// and the accepted fds queued for the test to pick up.
final class PeerStreamPair: @unchecked Sendable {
    let server: HostIdentity
    let client: HostIdentity
    let store: TrustStore
    let secrets = MigrationSecrets()
    let listener: PeerStreamListener
    let accepted = AcceptedQueue()
    /// What the server's authorize saw, for assertions.
    let headers = NIOLockedValueBox<[PeerStreamHeader]>([])

    init() async throws {
        let server = try HostIdentity.generate(hostName: "server", addresses: ["127.0.0.1"])
        let client = try HostIdentity.generate(hostName: "client")
        let store = try TrustStore(storage: MemoryTrustStorage())
        try store.add(try PeerCertificate(pem: client.certificatePEM), name: "client")
        self.server = server; self.client = client; self.store = store
        let (secrets, accepted, headers) = (secrets, accepted, headers)
        listener = try await PeerStreamListener.start(host: "127.0.0.1", port: 0, identity: server, trustStore: store) { header, fingerprint in
            headers.withLockedValue { $0.append(header) }
            try secrets.verify(migrationID: header.migration, presented: header.secret, peerFingerprint: fingerprint)
            return { fd in accepted.push(fd) }
        }
    }

    var remote: Remote { remote(pinning: server) }

    func remote(pinning identity: HostIdentity) -> Remote {
        Remote(name: "server", url: "https://127.0.0.1:8443", fingerprint: identity.fingerprint,
               certificatePEM: identity.certificatePEM)
    }

    /// Opens a stream for a fresh migration as `identity` (default: the trusted client).
    func open(channel: String = "test", migration: String = "m1", secret: String? = nil,
              as identity: HostIdentity? = nil, remote: Remote? = nil) async throws -> (client: Int32, server: Int32) {
        let presented = try secret ?? secrets.issue(migrationID: migration, peerFingerprint: client.fingerprint).secret
        let header = PeerStreamHeader(migration: migration, secret: presented, channel: channel)
        let fd = try await PeerStream.open(remote: remote ?? self.remote, identity: identity ?? client,
                                           port: listener.port, header: header)
        let serverFd = try await onThread { [accepted] in try accepted.pop() }
        setTimeouts(fd); setTimeouts(serverFd)
        return (fd, serverFd)
    }

    func stop() async { await listener.abortAll() }
}

/// Accepted fds, handed from the listener's threads to the test.
final class AcceptedQueue: @unchecked Sendable {
    private let lock = NSLock()
    private var fds: [Int32] = []
    private let available = DispatchSemaphore(value: 0)

    func push(_ fd: Int32) {
        lock.lock(); fds.append(fd); lock.unlock()
        available.signal()
    }

    func pop(timeout: TimeInterval = 20) throws -> Int32 {
        guard available.wait(timeout: .now() + timeout) == .success else { throw TestFailure("no stream accepted") }
        lock.lock(); defer { lock.unlock() }
        return fds.removeFirst()
    }
}

/// Runs blocking socket work on its own thread, not on Swift's cooperative pool.
func onThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try body() }) }
    }
}

/// A generous timeout on blocking calls, only so a broken bridge fails a test instead of
/// hanging it.
func setTimeouts(_ fd: Int32, seconds: Int = 30) {
    var limit = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
}

enum FD {
    static func write(_ fd: Int32, _ data: [UInt8]) throws {
        var offset = 0
        while offset < data.count {
            let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + offset, data.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            }
            offset += n
        }
    }

    /// Reads to EOF; throws the errno of a failed read.
    static func readAll(_ fd: Int32) throws -> [UInt8] {
        var result: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
            }
            if n == 0 { return result }
            result += buffer[0..<n]
        }
    }
}

/// FNV-1a-like hash over 8-byte words of a stream, independent of how the stream was cut
/// into reads (a partial word waits for the next chunk).
struct Checksum {
    var value: UInt64 = 0xcbf29ce484222325
    var pending: [UInt8] = []
    var count = 0

    mutating func add(_ bytes: UnsafeRawBufferPointer) {
        count += bytes.count
        var start = 0
        while !pending.isEmpty, start < bytes.count {
            pending.append(bytes[start]); start += 1
            if pending.count == 8 {
                mix(pending.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) })
                pending.removeAll(keepingCapacity: true)
            }
        }
        let words = (bytes.count - start) / 8
        var v = value
        for i in 0..<words { v = (v ^ bytes.loadUnaligned(fromByteOffset: start + i * 8, as: UInt64.self)) &* 0x100000001b3 }
        value = v
        for i in (start + words * 8)..<bytes.count { pending.append(bytes[i]) }
    }

    mutating func mix(_ word: UInt64) { value = (value ^ word) &* 0x100000001b3 }

    var final: UInt64 {
        var copy = self
        for byte in pending { copy.mix(UInt64(byte)) }
        return copy.value &+ UInt64(count)
    }
}
