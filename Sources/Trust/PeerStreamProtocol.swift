import Foundation
import GodwitCore
import NIOCore
import NIOPosix

/// Wire constants and helpers shared by both ends.
///
/// The header line (`PeerStreamHeader`) and the answer line (`PeerStreamAnswer`) are
/// decoded in PeerStreamFraming.swift, apart from NIO. After them, each direction is a sequence of frames
/// `[u32 big-endian length][length bytes]`; a frame of length 0 ends that direction. The
/// explicit end is what makes half-close reliable: TLS close_notify closes both directions,
/// and a TCP FIN cannot be told apart from a peer that died, so an end of stream without the
/// 0 frame is an abnormal end and tears the local socket down completely.
enum PeerStreamWire {
    static let maxHeaderLength = PeerStreamFraming.maxHeaderLength
    static let maxFrame = PeerStreamFraming.maxFrame
    /// Outbound bytes allowed to queue on a channel before we stop reading its partner.
    static let highWaterMark = 1024 * 1024
    static let lowWaterMark = 256 * 1024

    static func encodeLine<T: Encodable>(_ value: T, allocator: ByteBufferAllocator) -> ByteBuffer {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var data = (try? encoder.encode(value)) ?? Data("{}".utf8)
        data.append(UInt8(ascii: "\n"))
        return allocator.buffer(bytes: data)
    }

    /// TCP options for both ends: a dead peer (power loss, cable pulled, process frozen) is
    /// noticed within seconds instead of the kernel's two hours, and unacknowledged data
    /// times out after 15 s, so a blocked reader on the local socket does not hang forever.
    static func applyTCPOptions(_ channel: Channel) throws {
        guard let options = channel.syncOptions else { return }
        let settings: [(Int32, Int32, ChannelOptions.Types.SocketOption.Value)] = [
            (SOL_SOCKET, SO_KEEPALIVE, 1),
            (Int32(IPPROTO_TCP), TCP_KEEPIDLE, 5),
            (Int32(IPPROTO_TCP), TCP_KEEPINTVL, 2),
            (Int32(IPPROTO_TCP), TCP_KEEPCNT, 3),
            (Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, 15_000),
            (Int32(IPPROTO_TCP), TCP_NODELAY, 1),
        ]
        for (level, name, value) in settings {
            let option = ChannelOptions.Types.SocketOption(level: NIOBSDSocket.OptionLevel(rawValue: level),
                                                           name: NIOBSDSocket.Option(rawValue: name))
            try options.setOption(option, value: value)
        }
        try options.setOption(.recvAllocator, value: receiveAllocator)
        try options.setOption(.writeBufferWaterMark, value: .init(low: lowWaterMark, high: highWaterMark))
    }

    static var receiveAllocator: AdaptiveRecvByteBufferAllocator {
        AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 64 * 1024, maximum: maxFrame)
    }

    /// A close-on-exec stream socketpair: `[0]` for the user, `[1]` for the bridge.
    static func socketPair() throws -> (user: Int32, bridge: Int32) {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw GodwitError.errno("socketpair for a peer stream")
        }
        // Bigger kernel buffers mean fewer wake-ups when streaming GBs; the bridge still
        // bounds what it queues in user space.
        var size: Int32 = 1 << 20
        for fd in fds {
            _ = setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        return (fds[0], fds[1])
    }

    /// Wraps the bridge end of a socketpair in a NIO channel on `eventLoop` (the TLS
    /// channel's loop, so the two handlers never need locks).
    static func localChannel(fd: Int32, on eventLoop: EventLoop, bridge: PeerStreamBridge) -> EventLoopFuture<Channel> {
        ClientBootstrap(group: eventLoop)
            .channelOption(.allowRemoteHalfClosure, value: true)
            .channelOption(.recvAllocator, value: receiveAllocator)
            .channelOption(.writeBufferWaterMark, value: .init(low: lowWaterMark, high: highWaterMark))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(LocalSideHandler(bridge: bridge))
                }
            }
            .withConnectedSocket(fd)
    }
}

/// What the listener answers for a refused header, from whatever `authorize` threw.
extension PeerStreamAnswer {
    init(refusal error: any Error) {
        if let trust = error as? TrustError {
            self.init(ok: nil, error: trust.error.message, status: trust.status)
        } else if let godwit = error as? GodwitError {
            self.init(ok: nil, error: godwit.message, status: 403)
        } else {
            self.init(ok: nil, error: String(describing: error), status: 403)
        }
    }
}
