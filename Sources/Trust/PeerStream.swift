import Foundation
import GodwitCore
import NIOCore
import NIOPosix
import NIOSSL

/// The client side of the data plane: opens one authenticated, encrypted channel to a
/// remote's `PeerStreamListener` and returns a local socket fd bridged to it. Writing to the
/// fd sends to the peer, reading it receives; `shutdown(fd, SHUT_WR)` (or closing after the
/// last write) ends our direction only, and the peer's reader sees EOF. If the connection
/// dies instead (reset, TLS error, peer killed), the fd is closed under the user: reads end
/// (EOF or ECONNRESET) and writes fail with EPIPE at once. The caller owns and closes the fd.
///
/// An aborted stream can look like EOF to a reader; the protocols carried (rsync, tar, CRIU's
/// page server) have their own end markers, which is what tells truncation from completion.
public enum PeerStream {
    /// Connects to `remote`'s host at `port` (its data port, not the HTTPS one), presenting
    /// `identity` and accepting only the remote's pinned certificate, then sends `header`.
    public static func open(remote: Remote, identity: HostIdentity, port: Int, header: PeerStreamHeader,
                            group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                            connectTimeout: TimeAmount = .seconds(10)) async throws -> Int32 {
        try await connect(remote: remote, identity: identity, port: port, header: header, group: group,
                          connectTimeout: connectTimeout).get()
    }

    /// The same for thread-based callers (must not run on an event loop).
    public static func openBlocking(remote: Remote, identity: HostIdentity, port: Int, header: PeerStreamHeader,
                                    group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                                    connectTimeout: TimeAmount = .seconds(10)) throws -> Int32 {
        try connect(remote: remote, identity: identity, port: port, header: header, group: group,
                    connectTimeout: connectTimeout).wait()
    }

    /// Whether the host answered the connection with a reset (ECONNREFUSED): nothing listens
    /// there, unlike a link that is down, which times out or is unreachable.
    static func refused(_ error: any Error) -> Bool {
        if let io = error as? IOError { return io.errnoCode == ECONNREFUSED }
        if let connection = error as? NIOConnectionError { return connection.connectionErrors.contains { refused($0.error) } }
        return false
    }

    /// The host part of a remote's "https://HOST:PORT" url ("[v6]" brackets removed).
    static func host(of remote: Remote) throws -> String {
        guard let components = URLComponents(string: remote.url), var host = components.host, !host.isEmpty else {
            throw GodwitError("remote '\(remote.name)' has no host in its url '\(remote.url)'")
        }
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return host
    }

    static func connect(remote: Remote, identity: HostIdentity, port: Int, header: PeerStreamHeader,
                        group: EventLoopGroup, connectTimeout: TimeAmount) -> EventLoopFuture<Int32> {
        let loop = group.next()
        let what = "peer stream '\(header.channel)' of migration \(header.migration) to remote '\(remote.name)'"
        func annotate(_ error: GodwitError) -> GodwitError {
            error.with("channel", header.channel).with("migration", header.migration)
        }
        let sslContext: NIOSSLContext
        let host: String
        do {
            // The port comes from the remote's answer: out of range, NIO would trap on it.
            guard (1...65535).contains(port) else {
                throw GodwitError("remote '\(remote.name)' named data port \(port), which is not a TCP port")
            }
            host = try Self.host(of: remote)
            sslContext = try NIOSSLContext(configuration: try MutualTLS.clientConfiguration(
                identity: identity, pinnedCertificatePEM: remote.certificatePEM))
        } catch {
            return loop.makeFailedFuture(annotate(GodwitError.wrap(error, doing: "opening \(what)")))
        }
        let result = loop.makePromise(of: Int32.self)
        let bridge = PeerStreamBridge()
        bridge.label = what
        bridge.lineReceived = { bridge, context, line in
            answerReceived(line, bridge: bridge, context: context, result: result, remote: remote, annotate: annotate)
        }
        bridge.aborted = { error in
            // Before the answer this fails `open`; afterwards the promise is already
            // complete and the local fd's closure is how the user learns.
            let failure = error.map { PeerClient.connectionError($0, remote: remote) }
                ?? GodwitError("remote '\(remote.name)' closed the connection before answering",
                               hint: "is its certificate trusting ours (`godwit trust list` there)?",
                               context: [("url", remote.url)])
            result.fail(annotate(failure))
        }
        ClientBootstrap(group: loop)
            .connectTimeout(connectTimeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try PeerStreamWire.applyTCPOptions(channel)
                    // The pin replaces host name checks (peers are addressed by IP).
                    let ssl = try NIOSSLClientHandler(context: sslContext, serverHostname: nil)
                    try channel.pipeline.syncOperations.addHandlers(ssl, bridge)
                }
            }
            .connect(host: host, port: port)
            .whenComplete { connected in
                switch connected {
                case .success(let channel):
                    // TLS 1.3 sends this right after the handshake, in the client's first flight.
                    channel.pipeline.context(handler: bridge).whenSuccess { context in
                        bridge.writeLine(header, context: context).whenFailure { error in
                            context.fireErrorCaught(error)
                        }
                    }
                case .failure(let error):
                    var failure = PeerClient.connectionError(error, remote: remote).with("port", "\(port)")
                    if refused(error) { failure = failure.with("refused", "nothing listens on the data port") }
                    result.fail(annotate(failure))
                }
            }
        return result.futureResult
    }

    static func answerReceived(_ line: Substring, bridge: PeerStreamBridge, context: ChannelHandlerContext,
                               result: EventLoopPromise<Int32>, remote: Remote,
                               annotate: @escaping (GodwitError) -> GodwitError) {
        guard let answer = PeerStreamAnswer.parse(line) else {
            result.fail(annotate(GodwitError("remote '\(remote.name)' answered something that is not a peer stream answer: \(line.prefix(100))")))
            return context.close(promise: nil)
        }
        guard answer.ok == true else {
            let status = answer.status ?? 403
            result.fail(annotate(GodwitError("remote '\(remote.name)' refused the stream: \(answer.error ?? "no reason given")",
                                             hint: status == 403 ? "the migration may have ended or been cancelled there; start it again" : nil,
                                             context: [("status", "\(status)")])))
            return context.close(promise: nil)
        }
        let fds: (user: Int32, bridge: Int32)
        do {
            fds = try PeerStreamWire.socketPair()
        } catch {
            result.fail(annotate(GodwitError.wrap(error, doing: "bridging the stream")))
            return context.close(promise: nil)
        }
        bridge.open()
        PeerStreamWire.localChannel(fd: fds.bridge, on: context.eventLoop, bridge: bridge).whenComplete { local in
            switch local {
            case .success where bridge.phase == .closed:
                // The connection died while the bridge was being set up; `aborted` has
                // already failed `result`.
                close(fds.user)
            case .success:
                result.succeed(fds.user)
            case .failure(let error):
                close(fds.user)
                result.fail(annotate(GodwitError.wrap(error, doing: "bridging the stream")))
                bridge.fail(context, error)
            }
        }
    }
}
