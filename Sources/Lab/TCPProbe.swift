import Foundation
import GodwitCore

/// One throughput measurement: what the sink received and over how long.
public struct LinkSample: Codable, Sendable, Equatable {
    public var bytes: UInt64
    public var seconds: Double

    public init(bytes: UInt64, seconds: Double) {
        self.bytes = bytes
        self.seconds = seconds
    }

    public var megabitsPerSecond: Double { seconds > 0 ? Double(bytes) * 8 / seconds / 1e6 : 0 }
}

/// Both ends of a bulk TCP transfer, with plain sockets so a measurement needs nothing
/// installed (no iperf). Each end runs in its own process inside a lab namespace.
///
/// The sink measures: it counts what arrives during a fixed window from the first byte and
/// then resets the connection, which stops the source. Measuring at the sender would count
/// megabytes still queued in its socket buffer, which on a shaped link is seconds of data.
public enum TCPProbe {
    /// Large reads and writes keep per-syscall overhead out of the figure on fast veths;
    /// socket buffers are left to the kernel's autotuning, which grows them further than
    /// SO_RCVBUF would (setting it turns autotuning off).
    public static let chunkSize = 1 << 20

    /// Accepts one connection on `port` (all addresses), counts bytes for `seconds` from the
    /// first byte. Gives up after `acceptTimeout` seconds without a connection or data, or
    /// as soon as `lifeline` (a pipe from the parent that is never written) hangs up.
    public static func sink(port: UInt16, seconds: Double, acceptTimeout: Double = 10,
                            lifeline: Int32? = nil) throws -> LinkSample {
        let listener = try makeSocket()
        defer { close(listener) }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = socketAddress(ip: INADDR_ANY, port: port)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw GodwitError.errno("bind to port \(port)", hint: "another link test may be using the port; retry") }
        guard listen(listener, 1) == 0 else { throw GodwitError.errno("listen") }
        guard try waitReadable(listener, timeout: acceptTimeout, lifeline: lifeline) else {
            throw GodwitError("no connection within \(Int(acceptTimeout)) s on port \(port)",
                              hint: "the source could not reach this host; check `godwit lab status` and ping between the hosts")
        }
        let connection = accept(listener, nil, nil)
        guard connection >= 0 else { throw GodwitError.errno("accept") }
        defer { close(connection) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        guard try waitReadable(connection, timeout: acceptTimeout, lifeline: lifeline) else {
            throw GodwitError("connected but no data arrived within \(Int(acceptTimeout)) s", hint: "is the link shaped to a tiny rate?")
        }
        let start = monotonicSeconds()
        var bytes: UInt64 = 0
        var end = start
        while true {
            let remaining = start + seconds - monotonicSeconds()
            if remaining <= 0 { break }
            guard try waitReadable(connection, timeout: remaining, lifeline: lifeline) else { break }
            let count = read(connection, buffer, chunkSize)
            end = monotonicSeconds()
            if count > 0 {
                bytes += UInt64(count)
            } else if count == 0 {
                break
            } else if errno != EINTR {
                throw GodwitError.errno("read")
            }
        }
        // A reset rather than a FIN: the source must stop now, not drain its buffer first.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(connection, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        return LinkSample(bytes: bytes, seconds: max(end - start, 1e-9))
    }

    /// Connects to ip:port (retrying while the sink starts up) and sends until the sink
    /// resets the connection, `maxSeconds` pass or `lifeline` hangs up. Returns the bytes
    /// handed to the kernel.
    @discardableResult
    public static func source(ip: String, port: UInt16, maxSeconds: Double, connectTimeout: Double = 10,
                              lifeline: Int32? = nil) throws -> UInt64 {
        var inAddress = in_addr()
        guard inet_pton(AF_INET, ip, &inAddress) == 1 else {
            throw GodwitError("invalid IPv4 address '\(ip)'", hint: "give a dotted quad such as 10.77.0.12")
        }
        let started = monotonicSeconds()
        let fd = try connect(to: inAddress, port: port, until: started + connectTimeout, lifeline: lifeline)
        defer { close(fd) }
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: chunkSize, alignment: 4096)
        defer { buffer.deallocate() }
        memset(buffer, 0x5a, chunkSize)
        var sent: UInt64 = 0
        while monotonicSeconds() < started + maxSeconds {
            try checkLifeline(lifeline)
            let count = send(fd, buffer, chunkSize, Int32(MSG_NOSIGNAL))
            if count > 0 {
                sent += UInt64(count)
                continue
            }
            switch errno {
            case EINTR, EAGAIN: continue  // EAGAIN: the send timeout fired; check the deadline
            case EPIPE, ECONNRESET: return sent  // the sink's window is over
            default: throw GodwitError.errno("send")
            }
        }
        return sent
    }

    private static func connect(to address: in_addr, port: UInt16, until deadline: Double, lifeline: Int32?) throws -> Int32 {
        while true {
            try checkLifeline(lifeline)
            let fd = try makeSocket()
            // SO_SNDTIMEO bounds connect() as well as send(): nothing here can hang.
            var timeout = timeval(tv_sec: 1, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var target = socketAddress(ip: address.s_addr, port: port, networkOrder: true)
            let result = withUnsafePointer(to: &target) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            if result == 0 { return fd }
            // A connect cut short by SO_SNDTIMEO reports EINPROGRESS: it timed out.
            let code = errno == EINPROGRESS ? ETIMEDOUT : errno
            close(fd)
            guard monotonicSeconds() < deadline else {
                throw GodwitError.errno("connect to port \(port)", code,
                                        hint: "is the sink running in the destination host, and can the hosts ping each other?")
            }
            usleep(50_000)
        }
    }

    private static func makeSocket() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GodwitError.errno("socket") }
        return fd
    }

    private static func socketAddress(ip: in_addr_t, port: UInt16, networkOrder: Bool = false) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = networkOrder ? ip : ip.bigEndian
        return address
    }

    /// poll(2) for readability; false on timeout. Throws when the lifeline hangs up.
    private static func waitReadable(_ fd: Int32, timeout: Double, lifeline: Int32?) throws -> Bool {
        let deadline = monotonicSeconds() + timeout
        while true {
            var entries = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
            if let lifeline { entries.append(pollfd(fd: lifeline, events: Int16(POLLIN), revents: 0)) }
            let milliseconds = Int32(max(0, min((deadline - monotonicSeconds()) * 1000, 3_600_000)).rounded(.up))
            let ready = poll(&entries, nfds_t(entries.count), milliseconds)
            if ready < 0 {
                if errno == EINTR { continue }
                throw GodwitError.errno("poll")
            }
            if entries.count > 1 && entries[1].revents != 0 { throw parentGone }
            return ready > 0
        }
    }

    /// The parent holds the lifeline's write end and never writes: any event on our end
    /// means it exited (even by SIGKILL), so the probe must not outlive it.
    private static func checkLifeline(_ lifeline: Int32?) throws {
        guard let lifeline else { return }
        var entry = pollfd(fd: lifeline, events: Int16(POLLIN), revents: 0)
        if poll(&entry, 1, 0) > 0 { throw parentGone }
    }

    private static let parentGone = GodwitError("the link test that started this probe is gone", hint: "nothing to do: the probe stops")

    static func monotonicSeconds() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
    }
}
