import Foundation
import GodwitCore

// glibc has it; Swift's Glibc module does not import GNU extensions. Close-on-exec must be
// atomic: another thread may spawn a process at any moment.
@_silgen_name("accept4")
private func accept4(_ fd: Int32, _ address: UnsafeMutablePointer<sockaddr>?, _ length: UnsafeMutablePointer<socklen_t>?,
                     _ flags: Int32) -> Int32

/// A lazy dump's page-server connection made before CRIU starts and handed to it
/// (`--ps-socket`), so that CRIU never listens: nobody else on the host can reach the
/// frozen container's memory, or send CLOSE and end it (CRIU's own page server accepts
/// the first connection on its port, from anyone).
///
/// It is a TCP connection over loopback, not a socketpair, for what CRIU makes of its
/// end: a clean EOF counts as CLOSE (the dump completes and the source's tasks die), only
/// a reset or an unknown command fails the dump (CRIU resumes the tasks). Our end resets
/// when closed (SO_LINGER {on, 0}), so a daemon that dies, or drops it, fails the dump and
/// the source runs on. The listener lives for one accept, and the accepted peer must be
/// our own connecting socket.
public struct PageServerConnection: Sendable {
    /// Our end: the relay's (resets when closed).
    public let ours: Int32
    /// CRIU's end: passed to `criu dump` as descriptor `CRIUProcess.pageServerFD`, then
    /// closed here by LazyDump.
    public let criu: Int32

    public static func make() throws -> PageServerConnection {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw GodwitError.errno("socket for the page-server connection") }
        defer { close(listener) }
        var address = loopback(port: 0)
        guard withSockaddr(&address, { bind(listener, $0, $1) }) == 0, listen(listener, 1) == 0 else {
            throw GodwitError.errno("listen for the page-server connection")
        }
        var bound = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        guard withUnsafeMutablePointer(to: &bound, {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }) == 0 else { throw GodwitError.errno("getsockname") }

        let ours = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard ours >= 0 else { throw GodwitError.errno("socket for the page-server connection") }
        var target = loopback(port: UInt16(bigEndian: bound.sin_port))
        guard withSockaddr(&target, { connect(ours, $0, $1) }) == 0 else {
            let error = GodwitError.errno("connect the page-server connection")
            close(ours)
            throw error
        }
        var mine = sockaddr_in()
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &mine) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(ours, $0, &length) } }
        var peer = sockaddr_in()
        length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let theirs = withUnsafeMutablePointer(to: &peer) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept4(listener, $0, &length, Int32(SOCK_CLOEXEC.rawValue)) }
        }
        // Another local process may have raced to the port: the accepted end must be ours.
        guard theirs >= 0, peer.sin_port == mine.sin_port, peer.sin_addr.s_addr == mine.sin_addr.s_addr else {
            if theirs >= 0 { close(theirs) }
            close(ours)
            throw GodwitError("another process connected to the page-server connection's listener")
        }
        var one: Int32 = 1
        for fd in [ours, theirs] { setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
        var reset = linger(l_onoff: 1, l_linger: 0)
        setsockopt(ours, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
        return PageServerConnection(ours: ours, criu: theirs)
    }

    /// Fails CRIU's session on purpose: an unknown command, then a reset. CRIU fails the
    /// dump and resumes the container (or lets its doomed tasks die).
    public static func abandon(_ fd: Int32) {
        _ = PageServerHeader.abortRequest.encode().withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var reset = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, socklen_t(MemoryLayout<linger>.size))
        shutdown(fd, Int32(SHUT_RDWR))
    }

    private static func loopback(port: UInt16) -> sockaddr_in {
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(port.bigEndian)
        a.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        return a
    }

    private static func withSockaddr(_ a: inout sockaddr_in, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
        withUnsafePointer(to: &a) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    }
}
