import Foundation
import GodwitCore
import Memory

/// Pre-copy with both ends in this process: the source's session writes rounds into one
/// end of a socketpair, a receiver thread applies them to the page store from the other.
/// The daemons will put a TCP connection where the socketpair is; nothing else changes.
public enum LocalPreCopy {
    public struct Result {
        public var report: PreCopyReport
        public var receipts: [RoundReceipt]
    }

    public static func run(tracker: DirtyTracker, store: PageStore, settings: ConvergenceSettings,
                           throttle: CPUThrottle? = nil, progress: ((String) -> Void)? = nil) throws -> Result {
        let (sourceEnd, destinationEnd) = try FileDescriptorStream.pair()
        let receiver = PreCopyReceiver(reader: PageRecordReader(source: destinationEnd), store: store)
        let box = ReceiverBox()
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            do {
                while let receipt = try receiver.receiveRound() { box.receipts.append(receipt) }
            } catch {
                box.error = error
                // Unblock a source still writing into a full socket buffer.
                shutdown(destinationEnd.fd, Int32(SHUT_RDWR))
            }
            done.signal()
        }
        thread.stackSize = 1 << 20
        thread.start()
        var sourceEndOpen: FileDescriptorStream? = sourceEnd
        let outcome: Swift.Result<PreCopyReport, Error>
        do {
            let session = PreCopySession(tracker: tracker, sender: PreCopySender(writer: PageRecordWriter(sink: sourceEnd)),
                                         settings: settings, throttle: throttle, progress: progress)
            outcome = .success(try session.run())
        } catch {
            outcome = .failure(error)
        }
        // EOF for the receiver: it returns nil after the last complete round.
        shutdown(sourceEnd.fd, Int32(SHUT_WR))
        done.wait()
        sourceEndOpen = nil
        _ = sourceEndOpen
        if case .failure(let error) = outcome { throw error }
        if let error = box.error { throw error }
        return Result(report: try outcome.get(), receipts: box.receipts)
    }
}

private final class ReceiverBox: @unchecked Sendable {
    var receipts: [RoundReceipt] = []
    var error: Error?
}
