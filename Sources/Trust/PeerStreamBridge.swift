import Foundation
import GodwitCore
import NIOCore

/// Sits on the TLS channel (after the NIOSSL handler) and joins it to the bridge end of a
/// local socketpair. Phase `.line`: one JSON line each way (header, answer), handled by the
/// role's `lineReceived`. Phase `.open`: frames (see `PeerStreamWire`) in both directions.
///
/// Backpressure is the NIO "glue" pattern: each side reads only while its partner channel is
/// writable (below its high-water mark), so at most ~1 MiB per direction sits in user space
/// whatever the volume streamed.
///
/// Concurrency model: confined to one event loop, the TLS channel's. The local channel is
/// created on that same loop (`PeerStreamWire.localChannel`), so LocalSideHandler's calls
/// into the bridge come from it too, and so do the future callbacks and scheduled tasks
/// that touch the bridge (PeerStream, PeerStreamListener). Every stored property is read
/// and written only there, hence no locks. The exceptions are `label`, `lineReceived` and
/// `aborted`, which PeerStream.connect sets on its caller's thread before the handler is
/// added to a pipeline (adding it goes through the loop, which orders those writes before
/// any use). `@unchecked Sendable` because NIO hands the handler to escaping @Sendable
/// closures that run on that loop; entry points called from outside NIO's own handler
/// callbacks assert that they are on it (debug builds).
final class PeerStreamBridge: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase { case line, open, closed }

    /// The role's handling of the first line received (header on the server, answer on the client).
    var lineReceived: (PeerStreamBridge, ChannelHandlerContext, Substring) -> Void = { _, context, _ in context.close(promise: nil) }
    /// Called once when the stream ends without both directions ending cleanly.
    var aborted: ((any Error)?) -> Void = { _ in }
    /// For error context: "remote 'h2'", "peer <fingerprint>"...
    var label = "peer stream"

    private(set) var phase = Phase.line
    private var context: ChannelHandlerContext?
    private var line = ByteBuffer()
    private(set) var local: Channel?
    private weak var localHandler: LocalSideHandler?
    /// Frame bytes that arrived before the local channel existed (at most one read's worth).
    private var held: [ByteBuffer] = []
    private var frames = PeerStreamFrameDecoder()
    private var receivedEnd: Bool { frames.ended }
    private var sentEnd = false
    private var endWritten = false
    private var localOutputDone = false
    private var pendingRead = false
    private var localNeedsFlush = false
    private var lastError: (any Error)?
    private var finished = false

    var tlsWritable: Bool { context?.channel.isWritable ?? false }

    // MARK: TLS side

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var buffer = unwrapInboundIn(data)
        switch phase {
        case .closed:
            return
        case .line:
            line.writeBuffer(&buffer)
            let found: (line: String, consumed: Int)?
            do { found = try line.withUnsafeReadableBytes { try PeerStreamFraming.firstLine(in: $0) } } catch {
                return fail(context, labelled(error))
            }
            guard let found else { return }
            line.moveReaderIndex(forwardBy: found.consumed)
            if line.readableBytes > 0 { held.append(line) }
            line = ByteBuffer()
            lineReceived(self, context, Substring(found.line))
        case .open:
            if local == nil { held.append(buffer) } else { consume(&buffer, context: context) }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if localNeedsFlush {
            localNeedsFlush = false
            local?.flush()
        }
    }

    /// Glue: read from TLS only when the local socket can take what we'd decode.
    func read(context: ChannelHandlerContext) {
        if phase == .open, !(local?.isWritable ?? false) {
            pendingRead = true
        } else {
            context.read()
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { localHandler?.resumeReading() }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if lastError == nil { lastError = error }
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        phase = .closed
        if !(receivedEnd && endWritten) {
            // An abnormal end must reach the local user as a dead socket (EOF/ECONNRESET
            // for its reader, EPIPE for its writer), never as a clean end of data.
            local?.close(promise: nil)
            aborted(lastError)
        }
        context.fireChannelInactive()
    }

    /// Protocol violation or local failure: tear everything down.
    func fail(_ context: ChannelHandlerContext, _ error: any Error) {
        context.eventLoop.assertInEventLoop()
        if lastError == nil { lastError = error }
        context.close(promise: nil)
    }

    /// Writes one JSON line (header or answer).
    func writeLine<T: Encodable>(_ value: T, context: ChannelHandlerContext) -> EventLoopFuture<Void> {
        context.eventLoop.assertInEventLoop()
        return context.writeAndFlush(wrapOutboundOut(PeerStreamWire.encodeLine(value, allocator: context.channel.allocator)))
    }

    // MARK: decoding frames from the peer

    private func consume(_ buffer: inout ByteBuffer, context: ChannelHandlerContext) {
        guard let local else { return }
        while buffer.readableBytes > 0 {
            let step: PeerStreamFrameDecoder.Step
            do { step = try buffer.withUnsafeReadableBytes { try frames.step($0) } } catch {
                return fail(context, labelled(error))
            }
            switch step {
            case .payload(let count):
                local.write(buffer.readSlice(length: count)!, promise: nil)
                localNeedsFlush = true
            case .prefix(let count):
                buffer.moveReaderIndex(forwardBy: count)
            case .end(let count):
                buffer.moveReaderIndex(forwardBy: count)
                endInbound()
            }
        }
    }

    private func labelled(_ error: any Error) -> GodwitError {
        GodwitError("\(label): \((error as? GodwitError)?.message ?? "\(error)")")
    }

    /// The peer ended its direction: once everything before it reached the local socket,
    /// shut down our writing side of it, so the local reader sees EOF (its writes go on).
    private func endInbound() {
        guard let local else { return }
        localNeedsFlush = false
        local.writeAndFlush(ByteBuffer()).whenComplete { [self] _ in
            local.close(mode: .output).whenComplete { [self] _ in
                localOutputDone = true
                finishIfDone()
            }
        }
    }

    // MARK: local side (called by LocalSideHandler on the same event loop)

    func attach(local channel: Channel, handler: LocalSideHandler) {
        channel.eventLoop.assertInEventLoop()
        context?.eventLoop.assertInEventLoop()
        guard phase != .closed, let context else {
            channel.close(promise: nil)
            return
        }
        local = channel
        localHandler = handler
        let early = held
        held = []
        for var buffer in early { consume(&buffer, context: context) }
        channelReadComplete(context: context)
        if pendingRead, channel.isWritable {
            pendingRead = false
            context.read()
        }
    }

    func open() {
        context?.eventLoop.assertInEventLoop()
        phase = .open
    }

    func sendData(_ buffer: ByteBuffer) {
        guard let context, phase == .open, !sentEnd else { return }
        var buffer = buffer
        while buffer.readableBytes > 0 {
            let chunk = buffer.readSlice(length: min(buffer.readableBytes, PeerStreamWire.maxFrame))!
            var header = context.channel.allocator.buffer(capacity: 4)
            header.writeInteger(UInt32(chunk.readableBytes))
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(chunk), promise: nil)
        }
    }

    func flushToPeer() { context?.flush() }

    /// The local user ended its writing side (shutdown(SHUT_WR) or close): end our direction.
    func sendEnd() {
        guard let context, phase == .open, !sentEnd else { return }
        sentEnd = true
        var header = context.channel.allocator.buffer(capacity: 4)
        header.writeInteger(UInt32(0))
        context.writeAndFlush(wrapOutboundOut(header)).whenComplete { [self] result in
            if case .success = result { endWritten = true }
            finishIfDone()
        }
    }

    func localWritabilityChanged(_ writable: Bool) {
        guard writable, pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    /// The local socket failed (EPIPE: its user closed without reading) or closed.
    func localEnded(error: (any Error)?) {
        guard let context, phase != .closed else { return }
        if receivedEnd && endWritten { return finishIfDone() }
        fail(context, error ?? GodwitError("\(label): the local end closed before the stream ended"))
    }

    private func finishIfDone() {
        guard receivedEnd, endWritten, localOutputDone, !finished else { return }
        finished = true
        phase = .closed
        local?.close(promise: nil)
        context?.close(promise: nil)
    }
}

/// On the bridge end of the socketpair: forwards what the local user writes as frames, and
/// applies the glue's backpressure in the other direction.
///
/// Concurrency model: runs on the bridge's event loop (the local channel is created on
/// it); `context` and `pendingRead` are touched only there, by its own callbacks and by
/// the bridge's `resumeReading` call. `@unchecked Sendable` for the same reason as the
/// bridge.
final class LocalSideHandler: ChannelDuplexHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer

    let bridge: PeerStreamBridge
    private var context: ChannelHandlerContext?
    private var pendingRead = false

    init(bridge: PeerStreamBridge) { self.bridge = bridge }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        bridge.attach(local: context.channel, handler: self)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        bridge.sendData(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) { bridge.flushToPeer() }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { bridge.sendEnd() }
        context.fireUserInboundEventTriggered(event)
    }

    /// Glue: read what the user wrote only while TLS can take it.
    func read(context: ChannelHandlerContext) {
        if bridge.tlsWritable { context.read() } else { pendingRead = true }
    }

    func resumeReading() {
        context?.eventLoop.assertInEventLoop()
        guard pendingRead, let context else { return }
        pendingRead = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        bridge.localWritabilityChanged(context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        bridge.localEnded(error: error)
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        bridge.localEnded(error: nil)
        context.fireChannelInactive()
    }
}
