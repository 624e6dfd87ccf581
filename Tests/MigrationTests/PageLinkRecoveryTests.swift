import Checkpoint
import Foundation
import GodwitCore
import Memory
@testable import Migration
import Testing

/// A post-copy page channel that breaks after the commit: the proxy keeps its unanswered
/// requests and sends them again when the source reconnects; the relay drops what CRIU
/// still owed the broken channel; past the grace period the session fails.
struct PageLinkRecoveryTests {
    let proxyTests = LazyPageProxyTests()

    func reply(_ c: FileDescriptorStream) throws -> (vaddr: UInt64, pages: Int, data: [UInt8]) {
        var h = [UInt8](repeating: 0, count: 32)
        guard try h.withUnsafeMutableBytes({ try c.readFull($0) }) else { throw GodwitError("EOF") }
        let header = try PageServerHeader(bytes: h)
        var data = [UInt8](repeating: 0, count: header.byteCount)
        guard try data.withUnsafeMutableBytes({ try c.readFull($0) }) else { throw GodwitError("EOF in data") }
        return (header.vaddr, header.pages, data)
    }

    @Test func theProxyAsksAgainOnANewConnectionAndAppliesEachAnswerOnce() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let first = FakePageServer(delayMicros: 300_000)
        let proxy = try LazyPageProxy(store: store, upstream: first)
        proxy.keepAcrossBreaks(graceSeconds: 10)
        proxy.start()
        defer { proxy.stop() }
        let client = try proxyTests.connect(proxy)
        try proxyTests.get(client, nsPID: 1, vaddr: 0x10000, pages: 2, pad: 7)
        #expect(poll(timeout: 5) { first.cond.withLock { first.gets.count } == 1 })
        proxy.cutUpstream()  // the answer is on its way: it must never be applied
        #expect(poll(timeout: 5) { proxy.linkDown != nil })
        #expect(proxy.wait(timeout: 0.3) == nil, "a broken link is waited out, not a failure")
        let second = FakePageServer(delayMicros: 0)
        #expect(proxy.reattach(second))
        let r = try reply(client)
        #expect(r.vaddr == 0x10000 && r.pages == 2)
        #expect(r.data == FakePageServer.page(0x10000) + FakePageServer.page(0x11000))
        #expect(second.cond.withLock { second.gets.map(\.vaddr) } == [0x10000], "the unanswered GET went out again")
        let s = proxy.statistics
        #expect(s.pagesFetched == 2 && s.pagesFetchedTwice == 0)
        #expect(proxy.reconnects == 1 && proxy.linkDown == nil)
    }

    @Test func theProxyGivesUpWhenTheLinkStaysDownPastTheGrace() throws {
        let store = try PageStore()
        defer { store.destroy() }
        let proxy = try LazyPageProxy(store: store, upstream: FakePageServer(delayMicros: 300_000))
        proxy.keepAcrossBreaks(graceSeconds: 1)
        proxy.start()
        defer { proxy.stop() }
        let client = try proxyTests.connect(proxy)
        try proxyTests.get(client, nsPID: 1, vaddr: 0x10000, pages: 1, pad: 0)
        usleep(50_000)
        proxy.cutUpstream()
        guard case .failed(let why)? = proxy.wait(timeout: 10) else {
            Issue.record("the session should fail after the grace")
            return
        }
        #expect(why.contains("stayed down for more than 1 s"), "\(why)")
        #expect(!proxy.reattach(FakePageServer()), "too late: no reconnect is taken")
    }

    /// CRIU's side: a fake page server that answers each GET in two halves, 200 ms apart,
    /// so that a channel can break in the middle of an answer.
    final class FakeCRIU: @unchecked Sendable {
        let ours: Int32, relays: Int32
        init() throws {
            var fds: [Int32] = [0, 0]
            guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
                throw GodwitError.errno("socketpair")
            }
            ours = fds[0]; relays = fds[1]
            Thread { [self] in serve() }.start()
        }
        private func serve() {
            var h = [UInt8](repeating: 0, count: 32)
            while PageServerRelay.readFull(ours, &h) {
                guard let header = try? PageServerHeader(bytes: h) else { break }
                if header.isClose {
                    _ = PageServerRelay.writeFull(ours, [0, 0, 0, 0])
                    break
                }
                guard let answer = try? header.reply(pages: header.pages) else { break }
                var data: [UInt8] = []
                for i in 0..<header.pages { data += FakePageServer.page(header.vaddr + UInt64(i * 4096)) }
                let half = data.count / 2
                guard PageServerRelay.writeFull(ours, answer.encode() + Array(data[..<half])) else { break }
                usleep(200_000)
                guard PageServerRelay.writeFull(ours, Array(data[half...])) else { break }
            }
            shutdown(ours, Int32(SHUT_RDWR))
        }
    }

    static func pair() throws -> (Int32, Int32) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw GodwitError.errno("socketpair")
        }
        return (fds[0], fds[1])
    }

    @Test func theRelayDropsWhatCRIUOwedABrokenChannelAndServesTheNextOne() throws {
        let criu = try FakeCRIU()
        let (first, firstRelayEnd) = try Self.pair()
        let relay = PageServerRelay(channel: firstRelayEnd, connected: criu.relays)
        let next = Locked<Int32>(-1)
        #expect(relay.keepAcrossBreaks(.init(graceSeconds: 10, peer: "test") { _ in
            let (ours, theirs) = try Self.pair()
            next.value = ours
            return theirs
        }))
        let get = try PageServerHeader.get(nsPID: 1, vaddr: 0x20000, pages: 4, padding: 3)
        let a = FileDescriptorStream(fd: first, owns: true)
        try get.encode().withUnsafeBytes { try a.write($0) }
        // Half an answer, then the channel breaks.
        var partial = [UInt8](repeating: 0, count: 32 + 4096)
        _ = try partial.withUnsafeMutableBytes { try a.readFull($0) }
        shutdown(first, Int32(SHUT_RDWR))
        #expect(poll(timeout: 5) { next.value >= 0 }, "the relay reconnected")
        let b = FileDescriptorStream(fd: next.value, owns: true)
        try get.encode().withUnsafeBytes { try b.write($0) }
        let r = try reply(b)
        #expect(r.vaddr == 0x20000 && r.pages == 4)
        var expected: [UInt8] = []
        for i in 0..<4 { expected += FakePageServer.page(0x20000 + UInt64(i * 4096)) }
        #expect(r.data == expected, "the new channel gets a whole answer, nothing of the old one")
        try PageServerHeader.closeRequest.encode().withUnsafeBytes { try b.write($0) }
        var status = [UInt8](repeating: 9, count: 4)
        #expect(try status.withUnsafeMutableBytes { try b.readFull($0) } && status == [0, 0, 0, 0])
        shutdown(next.value, Int32(SHUT_WR))
        #expect(relay.wait(timeout: 5))
        #expect(relay.committed && relay.reconnects == 1 && relay.failure == nil)
    }

    @Test func theRelayEndsTheSessionWhenNoChannelComesBackInTime() throws {
        let criu = try FakeCRIU()
        let (first, firstRelayEnd) = try Self.pair()
        let relay = PageServerRelay(channel: firstRelayEnd, connected: criu.relays)
        #expect(relay.keepAcrossBreaks(.init(graceSeconds: 1, peer: "test") { _ in throw GodwitError("injected: unreachable") }))
        shutdown(first, Int32(SHUT_RDWR))
        close(first)
        #expect(poll(timeout: 5) { relay.linkDown != nil || relay.hasEnded })
        #expect(relay.wait(timeout: 10))
        let failure = relay.failure ?? ""
        #expect(failure.contains("stayed down for more than 1 s") && failure.contains("injected: unreachable"), "\(failure)")
        // CRIU's end saw a reset-or-EOF without CLOSE: its session failed.
        var byte: UInt8 = 0
        #expect(recv(criu.ours, &byte, 1, Int32(MSG_DONTWAIT)) <= 0)
    }

    /// A destination that refuses the new channel no longer holds the migration: the relay
    /// ends at once instead of trying for the whole grace period.
    @Test func theRelayGivesUpAtOnceWhenTheDestinationRefusesTheChannel() throws {
        let criu = try FakeCRIU()
        let (first, firstRelayEnd) = try Self.pair()
        let relay = PageServerRelay(channel: firstRelayEnd, connected: criu.relays)
        #expect(relay.keepAcrossBreaks(.init(graceSeconds: 60, peer: "test") { _ in throw ChannelRefused("migration m is not in progress here") }))
        shutdown(first, Int32(SHUT_RDWR))
        close(first)
        #expect(relay.wait(timeout: 5), "ended well before the 60 s grace")
        let failure = relay.failure ?? ""
        #expect(failure.contains("refused the page channel") && failure.contains("not in progress"), "\(failure)")
    }
}
