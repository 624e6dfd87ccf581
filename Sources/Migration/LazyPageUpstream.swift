import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

/// Where a lazy page proxy gets what it lacks: the source's CRIU page server, spoken to in
/// CRIU's own page-server protocol over any ordered byte stream (a TCP connection to CRIU
/// in the local engine; later a relay through the daemons' authenticated TLS channel).
/// Requests go out as PageServerHeaders; answers come back in request order.
///
/// Sendable because a proxy calls it from several threads at once: `send` from the thread
/// answering lazy-pages (one at a time, under the proxy's lock, or CLOSE just after it),
/// `receive` and `finish` from its upstream thread, `abort` from whoever stops the session.
public protocol LazyPageUpstream: AnyObject, Sendable {
    func send(_ bytes: UnsafeRawBufferPointer) throws
    /// Fills the buffer completely or throws.
    func receive(_ buffer: UnsafeMutableRawBufferPointer) throws
    /// The clean end after CLOSE was answered (a FIN: the source's dump completes).
    func finish()
    /// Makes the source's dump FAIL (unknown command + reset) and unblocks `receive`.
    /// Idempotent. Before the commit this resumes the source; after it, the source tasks
    /// are already killed.
    func abort()
}

/// A TCP connection to CRIU's lazy page server, with SO_LINGER {on, 0} for the whole
/// session: any end that is not `finish()` (including the kernel closing it when Godwit
/// dies) is a reset, which CRIU treats as a failed session (see PageServerClient).
///
/// Concurrency model: `send` and `receive` are the socket's two directions, each used by
/// one thread at a time (the proxy's); `finish` and `abort` may come from any thread and
/// decide the end exactly once under `ended` (a Mutex held across their non-blocking
/// setsockopt/send(MSG_DONTWAIT)/shutdown, so one end is fully chosen before the other
/// is considered). Everything else is immutable.
public final class TCPPageServerUpstream: LazyPageUpstream, Sendable {
    public let fd: Int32
    private let stream: FileDescriptorStream
    private let ended = Mutex(false)

    public init(host: String, port: Int) throws {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw GodwitError.errno("socket") }
        var one: Int32 = 1
        setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(s, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &addr.sin_addr)
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard rc == 0 else {
            let e = GodwitError.errno("connect to CRIU page server \(host):\(port)")
            Glibc.close(s)
            throw e
        }
        fd = s
        stream = Self.stream(s)
        abortsWithCommand = true
    }

    /// Over an already connected stream (the daemons' channel to the source's relay).
    public init(connected fd: Int32) {
        self.fd = fd
        stream = Self.stream(fd)
        abortsWithCommand = false
    }

    /// The fd stays ours (closed in deinit, after the linger choice).
    private static func stream(_ fd: Int32) -> FileDescriptorStream {
        FileDescriptorStream(fd: fd, owns: false, name: "the source's page server")
    }

    /// Over a relay (see PageServerRelay) an abort is the end of the stream, which the
    /// relay turns into a reset; no unknown command (see PageServerClient.abandon).
    private let abortsWithCommand: Bool

    deinit {
        abort()
        Glibc.close(fd)  // linger 0 unless finish() switched it off: a reset
    }

    public func send(_ bytes: UnsafeRawBufferPointer) throws { try stream.write(bytes) }

    public func receive(_ buffer: UnsafeMutableRawBufferPointer) throws {
        guard try stream.readFull(buffer) else { throw GodwitError("the source's page server closed the connection") }
    }

    public func finish() {
        ended.withLock { ended in
            guard !ended else { return }
            ended = true
            var l = linger(l_onoff: 0, l_linger: 0)
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
            shutdown(fd, Int32(SHUT_WR))
        }
    }

    public func abort() {
        ended.withLock { ended in
            guard !ended else { return }
            ended = true
            // An unknown command fails CRIU's session whatever follows; SHUT_RD wakes our
            // reader without sending anything; the close in deinit sends the reset.
            guard abortsWithCommand else {
                shutdown(fd, Int32(SHUT_RDWR))
                return
            }
            let h = PageServerHeader.abortRequest.encode()
            _ = h.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            shutdown(fd, Int32(SHUT_RD))
        }
    }
}

/// Figures a proxy keeps (all in pages of 4 KiB unless said otherwise).
public struct LazyProxyStats: Sendable, Equatable {
    /// GETs from the destination's `criu lazy-pages`.
    public var requests = 0
    public var pagesRequested = 0
    /// Pages `criu lazy-pages` asked for after they were delivered (it never should).
    public var pagesRequestedTwice = 0
    public var localReplies = 0
    public var pagesServedLocally = 0
    public var forwardedRequests = 0
    public var pagesFetched = 0
    /// Pages fetched from the source more than once (must stay 0).
    public var pagesFetchedTwice = 0
    /// Fetched pages the store already held when they arrived (the push got there first).
    public var fetchedButAlreadyLocal = 0
    public var shortReplies = 0
    /// GETs the proxy sent on its own for the holes in a read-ahead window (see `lazyRuns`).
    public var prefetchRequests = 0
    /// GETs of the proxy's background walk (see LazyPageProxy+Background.swift).
    public var backgroundRequests = 0
}
