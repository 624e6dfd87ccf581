import Foundation
import GodwitCore
import Memory
import Synchronization

/// The source's half of the hybrid push between hosts: reads the final dirty pages from
/// the frozen tasks (process_vm_readv) and sends them as PageRecords through a channel,
/// in the background; the destination applies them to its lazy page proxy's store.
///
/// Concurrency model: one thread sends and then writes its outcome into `outcome`; the
/// engine reads it after `group` says the thread ended, or aborts by shutting the socket.
public final class PushSender: Sendable {
    private let fd: Int32
    private let group = DispatchGroup()
    private let outcome = Mutex<(stats: RoundStats?, error: (any Error)?, nanos: UInt64)>((nil, nil, 0))

    /// Only what must be pushed: the dirty pages (the invalidations carried the drops and
    /// exits already).
    public static func pushScan(_ scan: DirtyScan) -> DirtyScan {
        var push = scan
        for i in push.processes.indices { push.processes[i].dropped = PageRanges(); push.processes[i].isNew = false }
        push.exited = []
        return push
    }

    /// Starts sending on `fd` (owned from now on: shut down and closed when done), at the
    /// move's cap and compression.
    public init(scan: DirtyScan, round: Int, fd: Int32, link: MoveLink? = nil) {
        self.fd = fd
        let t0 = DispatchTime.now().uptimeNanoseconds
        group.enter()
        let scan = HandOff(scan)
        let thread = Thread { [self] in
            defer { group.leave() }
            do {
                let sink = FileDescriptorStream(fd: fd, owns: false)
                let sent = try PreCopySender(writer: link?.writer(onto: sink) ?? PageRecordWriter(sink: sink))
                    .sendRound(Self.pushScan(scan.value), round: round, tracker: nil)
                outcome.withLock { $0.stats = sent }
            } catch {
                outcome.withLock { $0.error = error }
            }
            shutdown(fd, Int32(SHUT_WR))
            outcome.withLock { $0.nanos = DispatchTime.now().uptimeNanoseconds - t0 }
        }
        thread.stackSize = 1 << 20
        thread.start()
    }

    deinit { close(fd) }

    /// Stops the push (the channel breaks; the destination fetches the rest on fault).
    public func abort() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Waits for the push to end: pages sent (data + zero), bytes, time, and the error if any.
    public func wait(timeout: TimeInterval) -> (pages: Int, bytes: UInt64, nanos: UInt64, error: Error?)? {
        guard group.wait(timeout: .now() + timeout) == .success else { return nil }
        return outcome.withLock { o in (o.stats.map { $0.dataPages + $0.zeroPages } ?? 0, o.stats?.bytesSent ?? 0, o.nanos, o.error) }
    }
}
