import Foundation
import Testing
@testable import Checkpoint

/// The page-server connection handed to CRIU: connected both ways, nobody else's, and our
/// end resets when it closes (CRIU reads a reset as a failed session, an EOF as CLOSE).
@Suite struct PageServerConnectionTests {
    @Test func bytesFlowBothWays() throws {
        let c = try PageServerConnection.make()
        defer { close(c.ours); close(c.criu) }
        var out: [UInt8] = [1, 2, 3]
        #expect(send(c.ours, &out, 3, 0) == 3)
        var inBuf = [UInt8](repeating: 0, count: 3)
        #expect(recv(c.criu, &inBuf, 3, Int32(MSG_WAITALL)) == 3 && inBuf == out)
        #expect(send(c.criu, &out, 3, 0) == 3)
        #expect(recv(c.ours, &inBuf, 3, Int32(MSG_WAITALL)) == 3)
    }

    @Test func closingOurEndIsAResetNotAnEOF() throws {
        let c = try PageServerConnection.make()
        defer { close(c.criu) }
        close(c.ours)
        var byte: UInt8 = 0
        let n = recv(c.criu, &byte, 1, 0)
        #expect(n == -1 && errno == ECONNRESET, "recv gave \(n), errno \(errno)")
    }

    @Test func abandonSendsAnUnknownCommandThenResets() throws {
        let c = try PageServerConnection.make()
        defer { close(c.ours); close(c.criu) }
        PageServerConnection.abandon(c.ours)
        var header = [UInt8](repeating: 0, count: PageServerHeader.size)
        #expect(recv(c.criu, &header, header.count, Int32(MSG_WAITALL)) == header.count)
        let decoded = try PageServerHeader(bytes: header)
        #expect(decoded.command == PageServerHeader.Command.abort)
    }

    @Test func noListenerIsLeft() throws {
        let before = Self.listeningPorts()
        let c = try PageServerConnection.make()
        defer { close(c.ours); close(c.criu) }
        #expect(Self.listeningPorts() == before, "a loopback listener outlived the connection")
    }

    static func listeningPorts() -> Set<String> {
        var ports = Set<String>()
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let text = (try? String(contentsOfFile: table, encoding: .utf8)) ?? ""
            for line in text.split(separator: "\n").dropFirst() {
                let f = line.split(separator: " ")
                if f.count > 3, f[3] == "0A" { ports.insert(String(f[1])) }
            }
        }
        return ports
    }
}
