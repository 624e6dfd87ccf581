import Foundation
import GodwitCore

/// A client of CRIU's page server in lazy mode (what `criu lazy-pages` does on a
/// destination), used to fetch the pages a destination lacks straight from a source whose
/// `criu dump --lazy-pages` keeps the container frozen.
///
/// The session (headers: see PageServerHeader): GET with dst_id = the task's pid inside
/// the container's pid namespace; the answer is the header echoed as ADD_F with
/// PE_PRESENT and nr_pages <= asked (short at the end of the source's range: ask again
/// for the rest), then nr_pages*4096 bytes. CLOSE ends the session: the source answers
/// int32 0 and its dump completes, which KILLS the source tasks.
///
/// Rollback needs care: CRIU's page server treats a clean end of stream (FIN) like CLOSE:
/// the dump SUCCEEDS and the source tasks are killed (verified with CRIU 4.2.1; the
/// session loop breaks on recv() == 0 with ret 0). Only a failed recv (RST) or an
/// unknown command fails the dump, and then CRIU resumes the source. So the socket runs
/// with SO_LINGER {on, 0} for the whole session: any close that is not the commit,
/// including the kernel closing it when Godwit dies, sends RST and the source resumes.
/// The commit alone switches lingering back off and ends with a clean FIN.
public final class PageServerClient {
    /// Largest single GET (CRIU's lazy-pages daemon goes up to 1024 pages).
    public static let maxPagesPerRequest = 256

    public let host: String
    public let port: Int
    private var fd: Int32 = -1
    public private(set) var pagesFetched = 0
    public private(set) var requests = 0
    public private(set) var shortReplies = 0
    private let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))

    public struct Request: Sendable, Equatable {
        public var nsPID: Int32
        public var vaddr: UInt64
        public var pages: Int
        public init(nsPID: Int32, vaddr: UInt64, pages: Int) { self.nsPID = nsPID; self.vaddr = vaddr; self.pages = pages }
    }

    public init(host: String, port: Int) throws {
        self.host = host
        self.port = port
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GodwitError.errno("socket") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        Self.setAbortOnClose(fd, true)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        guard inet_pton(AF_INET, host, &addr.sin_addr) == 1 else {
            Glibc.close(fd)
            throw GodwitError("page server address \(host) is not an IPv4 address")
        }
        let rc = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if rc != 0 {
            let error = GodwitError.errno("connect to CRIU page server \(host):\(port)",
                                          hint: "is the source's `criu dump --lazy-pages` running and listening?")
            Glibc.close(fd)
            fd = -1
            throw error
        }
    }

    /// Speaks the protocol over an already connected stream (the daemons' authenticated
    /// channel, relayed to the source's CRIU by `PageServerRelay`). The relay turns our
    /// abort and end of stream into what CRIU must see (unknown command, reset or FIN).
    public init(connected fd: Int32, peer: String) {
        self.host = peer
        self.port = 0
        self.fd = fd
        abortsWithCommand = false
    }

    /// Over a relay, an abort is just the end of the stream: the relay resets CRIU's
    /// connection. (An unknown command also fails CRIU's session, but CRIU 4.2.1 then left
    /// the container's network lock and its TCP sockets behind when it resumed it.)
    private var abortsWithCommand = true

    deinit { abandon() }

    /// Drops the connection WITHOUT CLOSE: an unknown command (CRIU fails the session
    /// on it), then a reset. The source's dump fails and CRIU resumes the source
    /// container. Idempotent.
    public func abandon() {
        guard fd >= 0 else { return }
        if abortsWithCommand { try? send(.abortRequest) }
        Self.setAbortOnClose(fd, true)
        Glibc.close(fd)
        fd = -1
    }

    /// SO_LINGER {on, 0}: close() sends RST instead of FIN.
    static func setAbortOnClose(_ fd: Int32, _ on: Bool) {
        var l = linger(l_onoff: on ? 1 : 0, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    /// Fetches `requests` with up to `window` GETs in flight (CRIU serves them one after
    /// the other; pipelining only hides the round trips), handing each answer (possibly
    /// a part of a request) to `deliver(nsPID, vaddr, pages, bytes)` in request order.
    public func fetch(_ requests: [Request], window: Int = 16,
                      deliver: (Int32, UInt64, Int, UnsafeRawBufferPointer) throws -> Void) throws {
        guard fd >= 0 else { throw GodwitError("page server connection already closed") }
        // Split into GET-sized pieces; short answers put their remainder at the back.
        var queue: [Request] = []
        for r in requests {
            var done = 0
            while done < r.pages {
                let n = min(Self.maxPagesPerRequest, r.pages - done)
                queue.append(Request(nsPID: r.nsPID, vaddr: r.vaddr + UInt64(done * pageSize), pages: n))
                done += n
            }
        }
        var inFlight: [Request] = []
        var next = 0
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.maxPagesPerRequest * pageSize, alignment: 4096)
        defer { buffer.deallocate() }
        while next < queue.count || !inFlight.isEmpty {
            while inFlight.count < max(1, window), next < queue.count {
                let r = queue[next]
                next += 1
                try send(.get(nsPID: r.nsPID, vaddr: r.vaddr, pages: r.pages))
                self.requests += 1
                inFlight.append(r)
            }
            let head = inFlight.removeFirst()
            let answer = try readHeader()
            guard answer.isPresentPages, answer.vaddr == head.vaddr, answer.nsPID == head.nsPID,
                  answer.pages > 0, answer.pages <= head.pages else {
                throw GodwitError("CRIU page server answered GET(\(head.nsPID), 0x\(String(head.vaddr, radix: 16)), \(head.pages)) with \(answer)",
                                  hint: "both hosts must run the same CRIU version (4.2 uses 32-byte headers)")
            }
            let bytes = answer.byteCount
            try readFull(UnsafeMutableRawBufferPointer(rebasing: buffer[0..<bytes]))
            pagesFetched += answer.pages
            try deliver(head.nsPID, head.vaddr, answer.pages, UnsafeRawBufferPointer(rebasing: buffer[0..<bytes]))
            if answer.pages < head.pages {
                shortReplies += 1
                queue.append(Request(nsPID: head.nsPID, vaddr: answer.endAddress, pages: head.pages - answer.pages))
            }
        }
    }

    /// Sends CLOSE and waits for the source's status: the commit. After it the source's
    /// dump completes and its tasks are killed.
    @discardableResult
    public func close() throws -> Int32 {
        guard fd >= 0 else { throw GodwitError("page server connection already closed") }
        try send(.closeRequest)
        var status: Int32 = -1
        try withUnsafeMutableBytes(of: &status) { try readFull($0) }
        // CRIU now waits for our end of stream; it must be a clean FIN (a reset here
        // would fail the dump after the fact and resume the source: two copies).
        Self.setAbortOnClose(fd, false)
        shutdown(fd, Int32(SHUT_WR))
        Glibc.close(fd)
        fd = -1
        guard status == 0 else { throw GodwitError("CRIU page server answered CLOSE with status \(status)") }
        return status
    }

    private func send(_ header: PageServerHeader) throws {
        let bytes = header.encode()
        try bytes.withUnsafeBytes { b in
            guard let base = b.baseAddress else { return }
            var done = 0
            while done < b.count {
                let n = Glibc.send(fd, base + done, b.count - done, Int32(MSG_NOSIGNAL))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw GodwitError.errno("sending to CRIU page server") }
                done += n
            }
        }
    }

    private func readHeader() throws -> PageServerHeader {
        var bytes = [UInt8](repeating: 0, count: PageServerHeader.size)
        try bytes.withUnsafeMutableBytes { try readFull($0) }
        return try PageServerHeader(bytes: bytes)
    }

    private func readFull(_ buffer: UnsafeMutableRawBufferPointer) throws {
        guard let base = buffer.baseAddress else { return }
        var done = 0
        while done < buffer.count {
            let n = recv(fd, base + done, buffer.count - done, 0)
            if n < 0 && errno == EINTR { continue }
            if n == 0 { throw GodwitError("CRIU page server closed the connection", hint: "see the source's dump.log") }
            guard n > 0 else { throw GodwitError.errno("reading from CRIU page server") }
            done += n
        }
    }

    /// A free TCP port on `host` (bound and released: CRIU binds it right after).
    public static func freePort(host: String = "127.0.0.1") throws -> Int {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw GodwitError.errno("socket") }
        defer { Glibc.close(s) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = 0
        inet_pton(AF_INET, host, &addr.sin_addr)
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, len) == 0 && getsockname(s, $0, &len) == 0 }
        }
        guard ok else { throw GodwitError.errno("finding a free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}
