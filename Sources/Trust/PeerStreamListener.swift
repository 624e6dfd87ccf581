import Foundation
import GodwitCore
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL

/// The data-plane server of godwitd: accepts mutual-TLS connections from trusted peers and
/// turns each authorized one into a local file descriptor (one end of a socketpair) that
/// blocking migration code (rsync, tar, CRIU's page server) uses as a plain socket.
///
/// Unlike the HTTPS API, trust is decided in the handshake: a client whose certificate is
/// not in the `TrustStore` (or that presents none) fails the handshake and nothing it sent
/// is ever read. Then `authorize` decides, from the header line, whether this trusted peer
/// may open this channel of this migration (typically `MigrationSecrets.verify`).
public final class PeerStreamListener: Sendable {
    /// Decides on a header from a trusted peer (whose certificate fingerprint is given).
    /// Throws to refuse (the message and, for a `TrustError`, the status go back to the
    /// peer); returns what to do with the accepted channel's fd, which it then owns (must
    /// close). Runs on an event loop: keep it quick; the returned closure runs on its own
    /// thread and may block.
    public typealias Authorize = @Sendable (_ header: PeerStreamHeader, _ peerFingerprint: String) throws
        -> @Sendable (Int32) -> Void

    /// The bound port (the kernel's choice when 0 was asked for).
    public let port: Int
    let serverChannel: Channel
    let connections: NIOLockedValueBox<[ObjectIdentifier: Channel]>

    init(serverChannel: Channel, connections: NIOLockedValueBox<[ObjectIdentifier: Channel]>) {
        self.serverChannel = serverChannel
        self.connections = connections
        port = serverChannel.localAddress?.port ?? 0
    }

    /// Binds and starts accepting. `port` 0 picks a free port (see `port`).
    public static func start(host: String, port: Int, identity: HostIdentity, trustStore: TrustStore,
                             group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                             authorize: @escaping Authorize) async throws -> PeerStreamListener {
        try await bootstrap(host: host, port: port, identity: identity, trustStore: trustStore, group: group,
                            authorize: authorize).get()
    }

    /// The same for thread-based callers (not on an event loop).
    public static func startBlocking(host: String, port: Int, identity: HostIdentity, trustStore: TrustStore,
                                     group: EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
                                     authorize: @escaping Authorize) throws -> PeerStreamListener {
        try bootstrap(host: host, port: port, identity: identity, trustStore: trustStore, group: group,
                      authorize: authorize).wait()
    }

    /// Stops accepting; channels already open carry on until they end.
    public func close() async {
        try? await serverChannel.close()
    }

    /// Stops accepting and drops every open channel at once (daemon shutdown; tests use it
    /// to play a peer that died): the other ends see their streams abort, not end.
    public func abortAll() async {
        await close()
        let open = connections.withLockedValue { Array($0.values) }
        for channel in open {
            // No end frames are sent: the peers see their streams abort, as if we died.
            try? await channel.close()
        }
    }

    static func bootstrap(host: String, port: Int, identity: HostIdentity, trustStore: TrustStore,
                          group: EventLoopGroup, authorize: @escaping Authorize) -> EventLoopFuture<PeerStreamListener> {
        let sslContext: NIOSSLContext
        do {
            var tls = try MutualTLS.serverConfiguration(identity: identity).tlsConfiguration
            // Here a client certificate is mandatory: there is no enrollment on this port.
            tls.certificateVerification = .noHostnameVerification
            sslContext = try NIOSSLContext(configuration: tls)
        } catch {
            return group.next().makeFailedFuture(GodwitError.wrap(error, doing: "setting up the peer stream listener's TLS"))
        }
        let connections = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
        return ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try PeerStreamWire.applyTCPOptions(channel)
                    let peer = NIOLockedValueBox<String?>(nil)
                    // Trust is checked in the handshake, so an untrusted client never gets
                    // to send a byte we would read.
                    let ssl = NIOSSLServerHandler(context: sslContext) { certificates, promise in
                        guard let leaf = certificates.first, let fingerprint = try? PeerCertificate(leaf).fingerprint,
                              trustStore.trusted(fingerprint: fingerprint) != nil else {
                            promise.succeed(.failed)
                            return
                        }
                        peer.withLockedValue { $0 = fingerprint }
                        promise.succeed(.certificateVerified)
                    }
                    let bridge = PeerStreamBridge()
                    bridge.label = "peer stream from \(channel.remoteAddress?.description ?? "?")"
                    bridge.lineReceived = { bridge, context, line in
                        serve(line, peer: peer.withLockedValue { $0 }, bridge: bridge, context: context, authorize: authorize)
                    }
                    try channel.pipeline.syncOperations.addHandlers(ssl, bridge)
                    let id = ObjectIdentifier(channel)
                    connections.withLockedValue { $0[id] = channel }
                    channel.closeFuture.whenComplete { _ in _ = connections.withLockedValue { $0.removeValue(forKey: id) } }
                    // A trusted peer that never sends its header must not hold a connection forever.
                    channel.eventLoop.scheduleTask(in: .seconds(30)) {
                        if bridge.phase == .line { channel.close(promise: nil) }
                    }
                }
            }
            .bind(host: host, port: port)
            .flatMapError { error in
                group.next().makeFailedFuture(GodwitError("cannot listen for peer streams on \(host):\(port): \(error)",
                                                          hint: "is another godwitd (or anything else) using that port?"))
            }
            .map { PeerStreamListener(serverChannel: $0, connections: connections) }
    }

    /// The header line of a trusted peer: authorize, answer, and on success bridge the stream
    /// to a new socketpair whose other end goes to the accepting closure.
    static func serve(_ line: Substring, peer: String?, bridge: PeerStreamBridge, context: ChannelHandlerContext,
                      authorize: Authorize) {
        let channel = context.channel
        func refuse(_ error: any Error) {
            bridge.writeLine(PeerStreamAnswer(refusal: error), context: context).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
        guard let peer else {
            // Cannot happen with a completed handshake; refuse rather than trust a nil.
            return refuse(TrustError.forbidden(GodwitError("no verified client certificate")))
        }
        let header: PeerStreamHeader
        do {
            header = try PeerStreamHeader.parse(line)
        } catch {
            return refuse(TrustError.badRequest(error as? GodwitError ?? GodwitError("\(error)")))
        }
        bridge.label = "peer stream '\(header.channel)' of migration \(header.migration)"
        let accept: @Sendable (Int32) -> Void
        do {
            accept = try authorize(header, peer)
        } catch {
            return refuse(error)
        }
        let fds: (user: Int32, bridge: Int32)
        do {
            fds = try PeerStreamWire.socketPair()
        } catch {
            return refuse(TrustError(500, GodwitError("\(error)")))
        }
        bridge.open()
        _ = bridge.writeLine(PeerStreamAnswer(ok: true), context: context)
        PeerStreamWire.localChannel(fd: fds.bridge, on: channel.eventLoop, bridge: bridge).whenComplete { result in
            switch result {
            case .success:
                let user = fds.user
                Thread.detachNewThread { accept(user) }
            case .failure(let error):
                // The bridge end may already belong to NIO; closing it again could hit
                // another thread's new fd, so only the user end is closed here.
                Glibc.close(fds.user)
                bridge.fail(context, error)
            }
        }
    }
}
