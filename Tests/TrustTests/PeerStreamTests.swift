import Foundation
import GodwitCore
import Testing
@testable import Trust

/// The data plane end to end: real TLS on 127.0.0.1 between two identities in this process.
@Suite(.serialized) struct PeerStreamTests {
    @Test func bytesFlowBothWaysAndEachDirectionEndsOnItsOwn() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let (client, server) = try await pair.open(channel: "rsync")
        defer { close(client); close(server) }
        #expect(pair.headers.withLockedValue { $0.map(\.channel) } == ["rsync"])

        // Client → server, then the client ends its direction only.
        try FD.write(client, Array("hello from the source".utf8))
        shutdown(client, Int32(SHUT_WR))
        let received = try await onThread { try FD.readAll(server) }
        #expect(String(decoding: received, as: UTF8.self) == "hello from the source")
        // The other direction still works after the first one ended.
        try FD.write(server, Array("and back".utf8))
        try FD.write(server, Array(" again".utf8))
        shutdown(server, Int32(SHUT_WR))
        let answer = try await onThread { try FD.readAll(client) }
        #expect(String(decoding: answer, as: UTF8.self) == "and back again")
    }

    @Test func theServerCanEndFirstAndCloseAfterWritingCountsAsAnEnd() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let (client, server) = try await pair.open()
        defer { close(client) }
        try FD.write(server, Array("early end".utf8))
        // Closing the fd after writing is a clean end too (what most programs do).
        close(server)
        let got = try await onThread { try FD.readAll(client) }
        #expect(String(decoding: got, as: UTF8.self) == "early end")
    }

    @Test func streams256MiBWithTheSameChecksum() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let (client, server) = try await pair.open(channel: "bulk")
        defer { close(client); close(server) }
        let total = 256 << 20
        async let sent: UInt64 = onThread {
            var sum = Checksum()
            var block = [UInt8](repeating: 0, count: 1 << 20)
            for index in 0..<(total >> 20) {
                // Different content in every block, so a dropped or repeated frame shows.
                for word in stride(from: 0, to: block.count, by: 4096) {
                    block[word] = UInt8(truncatingIfNeeded: index); block[word + 1] = UInt8(truncatingIfNeeded: word >> 12)
                    block[word + 2] = UInt8(truncatingIfNeeded: index >> 8)
                }
                block.withUnsafeBytes { sum.add($0) }
                try FD.write(client, block)
            }
            shutdown(client, Int32(SHUT_WR))
            return sum.final
        }
        async let received: (UInt64, Int) = onThread {
            var sum = Checksum()
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            while true {
                let n = read(server, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n < 0 { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
                if n == 0 { break }
                buffer.withUnsafeBytes { sum.add(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            }
            return (sum.final, sum.count)
        }
        let (arrived, count) = try await received
        #expect(count == total)
        #expect(try await sent == arrived)
    }

    @Test func aPeerThatDiesAbortsTheStreamInsteadOfEndingIt() async throws {
        let pair = try await PeerStreamPair()
        let (client, server) = try await pair.open()
        defer { close(client); close(server) }
        try FD.write(client, Array("some data".utf8))
        // The server host's side vanishes mid-stream (its connections reset).
        await pair.stop()
        // The client's writer learns at once (EPIPE or ECONNRESET), without a timeout:
        // the generous socket timeout of 30 s would make these reads fail with EAGAIN.
        let writeError = try await onThread { () -> Int32 in
            let chunk = [UInt8](repeating: 7, count: 65536)
            for _ in 0..<100_000 {
                do { try FD.write(client, chunk) } catch let error as POSIXError { return error.code.rawValue }
            }
            return 0
        }
        #expect(writeError == EPIPE || writeError == ECONNRESET)
        // Its reader sees the end too (EOF or ECONNRESET), not a hang.
        let readResult = try await onThread { () -> Int32 in
            do { _ = try FD.readAll(client); return 0 } catch let error as POSIXError { return error.code.rawValue }
        }
        #expect(readResult == 0 || readResult == ECONNRESET)
        // And the server's local end was torn down as well.
        let serverSide = try await onThread { () -> Int32 in
            do { _ = try FD.readAll(server); return 0 } catch let error as POSIXError { return error.code.rawValue }
        }
        #expect(serverSide == 0 || serverSide == ECONNRESET)
    }

    @Test func anUntrustedClientCertificateIsRefused() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let stranger = try HostIdentity.generate(hostName: "stranger")
        let error = await #expect(throws: GodwitError.self) {
            _ = try await pair.open(as: stranger)
        }
        #expect(error?.message.contains("TLS with remote 'server' failed") == true)
        // Nothing was read: authorize never saw a header.
        #expect(pair.headers.withLockedValue { $0.isEmpty })
    }

    @Test func aWrongSecretIsRefusedWithTheReason() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        _ = try pair.secrets.issue(migrationID: "m7", peerFingerprint: pair.client.fingerprint)
        let error = await #expect(throws: GodwitError.self) {
            _ = try await pair.open(migration: "m7", secret: Base64URL.encode(SecretBytes.random()))
        }
        #expect(error?.message.contains("remote 'server' refused") == true)
        #expect(error?.message.contains("wrong secret") == true)
        #expect(error?.context.contains { $0.0 == "migration" && $0.1 == "m7" } == true)
        #expect(error?.context.contains { $0.0 == "status" && $0.1 == "403" } == true)
    }

    @Test func aSecretServesManyChannelsUntilRevoked() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let secret = try pair.secrets.issue(migrationID: "m9", peerFingerprint: pair.client.fingerprint).secret
        for channel in ["rsync", "pages"] {
            let (client, server) = try await pair.open(channel: channel, migration: "m9", secret: secret)
            close(client); close(server)
        }
        // The migration ended: a recorded secret can't be replayed.
        pair.secrets.revoke(migrationID: "m9")
        let error = await #expect(throws: GodwitError.self) {
            _ = try await pair.open(migration: "m9", secret: secret)
        }
        #expect(error?.message.contains("migration ended") == true)
    }

    @Test func aServerWithAnotherCertificateThanThePinnedOneIsRefused() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let impostor = try HostIdentity.generate(hostName: "server", addresses: ["127.0.0.1"])
        let error = await #expect(throws: GodwitError.self) {
            _ = try await pair.open(remote: pair.remote(pinning: impostor))
        }
        #expect(error?.message.contains("pinned certificate") == true)
        #expect(pair.headers.withLockedValue { $0.isEmpty })
    }
}

/// Loopback throughput of a peer stream next to a plain socketpair, median of 3 runs of
/// 512 MiB each. Prints only (no wall-clock assertion); `GODWIT_BENCH=1` enables it.
@Suite(.serialized) struct PeerStreamThroughput {
    static let size = 512 << 20

    /// Writes `size` bytes into `writer` and reads them from `reader`: MB/s.
    static func measure(_ writer: Int32, _ reader: Int32) async throws -> Double {
        let start = Date()
        async let sent: Void = onThread {
            let block = [UInt8](repeating: 0x5a, count: 1 << 20)
            for _ in 0..<(size >> 20) { try FD.write(writer, block) }
            shutdown(writer, Int32(SHUT_WR))
        }
        let count = try await onThread { () -> Int in
            var buffer = [UInt8](repeating: 0, count: 1 << 20)
            var total = 0
            while true {
                let n = read(reader, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return total }
                total += n
            }
        }
        try await sent
        #expect(count == size)
        return Double(size) / 1e6 / Date().timeIntervalSince(start)
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["GODWIT_BENCH"] == "1"))
    func peerStreamVersusSocketpair() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        var stream: [Double] = [], plain: [Double] = []
        for run in 0..<3 {
            let (client, server) = try await pair.open(migration: "bench\(run)")
            stream.append(try await Self.measure(client, server))
            close(client); close(server)
            var fds: [Int32] = [-1, -1]
            _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds)
            plain.append(try await Self.measure(fds[0], fds[1]))
            close(fds[0]); close(fds[1])
        }
        let median = { (values: [Double]) in values.sorted()[1] }
        print(String(format: "peer stream: %.0f MB/s (runs %@); socketpair: %.0f MB/s (runs %@)",
                     median(stream), stream.map { String(format: "%.0f", $0) }.joined(separator: ", "),
                     median(plain), plain.map { String(format: "%.0f", $0) }.joined(separator: ", ")))
    }

    /// Request/response round trips shaped like CRIU's page-server protocol (32-byte
    /// request; 32-byte answer header written, then 64 KiB of pages written separately):
    /// median and 90th percentile in µs, through a peer stream and through a socketpair.
    static func pingPong(_ client: Int32, _ server: Int32, rounds: Int, pageBytes: Int = 64 << 10) async throws -> [Double] {
        async let served: Void = onThread {
            var request = [UInt8](repeating: 0, count: 32)
            let pages = [UInt8](repeating: 0x5a, count: pageBytes)
            for _ in 0..<rounds {
                var got = 0
                while got < 32 {
                    let n = request.withUnsafeMutableBytes { recv(server, $0.baseAddress! + got, 32 - got, 0) }
                    guard n > 0 else { throw POSIXError(.EIO) }
                    got += n
                }
                try FD.write(server, request)
                if pageBytes > 0 { try FD.write(server, pages) }
            }
        }
        let times = try await onThread { () -> [Double] in
            let request = [UInt8](repeating: 7, count: 32)
            var answer = [UInt8](repeating: 0, count: 32 + pageBytes)
            var times: [Double] = []
            for _ in 0..<rounds {
                let start = DispatchTime.now().uptimeNanoseconds
                try FD.write(client, request)
                var got = 0
                while got < answer.count {
                    let n = answer.withUnsafeMutableBytes { recv(client, $0.baseAddress! + got, $0.count - got, 0) }
                    guard n > 0 else { throw POSIXError(.EIO) }
                    got += n
                }
                times.append(Double(DispatchTime.now().uptimeNanoseconds - start) / 1000)
            }
            return times
        }
        try await served
        return times.sorted()
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["GODWIT_BENCH"] == "1"))
    func requestResponseLatency() async throws {
        let pair = try await PeerStreamPair()
        defer { Task { await pair.stop() } }
        let rounds = 1000
        let p = { (t: [Double], q: Double) in t[Int(Double(t.count - 1) * q)] }
        for size in [0, 4096, 64 << 10, 1 << 20] {
            let (client, server) = try await pair.open(migration: "latency\(size)")
            setTimeouts(client); setTimeouts(server)
            let stream = try await Self.pingPong(client, server, rounds: rounds, pageBytes: size)
            close(client); close(server)
            var fds: [Int32] = [-1, -1]
            _ = socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds)
            let plain = try await Self.pingPong(fds[0], fds[1], rounds: rounds, pageBytes: size)
            close(fds[0]); close(fds[1])
            print(String(format: "round trip 32 B -> 32 B + %d B: peer stream median %.0f µs, p90 %.0f µs, max %.0f µs; socketpair median %.0f µs, p90 %.0f µs",
                         size, p(stream, 0.5), p(stream, 0.9), stream.last!, p(plain, 0.5), p(plain, 0.9)))
        }
    }
}
