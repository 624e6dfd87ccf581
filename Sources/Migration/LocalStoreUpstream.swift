import Checkpoint
import Foundation
import GodwitCore
import Synchronization

/// The upstream of a lazy page proxy whose store already holds every page (pre-copy's
/// restore from the complete local store): nothing may come from the source any more, so
/// a GET reaching it is a bug in the page bookkeeping and fails the session, which kills
/// the restored tasks before they can read a page that isn't there. CLOSE is answered here
/// (status 0): the source's own page session is closed by the restore method, not by
/// lazy-pages.
///
/// Concurrency model: `send` comes from the proxy's downstream thread (under its lock),
/// `receive` from its upstream thread, `abort` from anyone; the one mutable fact (a CLOSE
/// to answer, or the end) is in `state`, and `receive` waits for it on `ready`.
public final class LocalStoreUpstream: LazyPageUpstream, Sendable {
    private enum Phase { case open, closeAsked, ended(String) }
    private let state = Mutex(Phase.open)
    private let ready = DispatchSemaphore(value: 0)

    public init() {}

    public func send(_ bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count >= PageServerHeader.size,
              let header = try? PageServerHeader(bytes: Array(bytes.prefix(PageServerHeader.size))) else {
            throw GodwitError("local page store: a request that is not a page-server header")
        }
        guard header.isClose else {
            let why = "page \(header.nsPID):0x\(String(header.vaddr, radix: 16)) (\(header.pages) pages) is not in the local store, "
                + "and after a copy nothing may come from the source"
            end(why)
            throw GodwitError(why)
        }
        state.withLock { if case .open = $0 { $0 = .closeAsked } }
        ready.signal()
    }

    public func receive(_ buffer: UnsafeMutableRawBufferPointer) throws {
        while true {
            let phase = state.withLock { $0 }
            switch phase {
            case .closeAsked:
                // The answer to CLOSE is an int32 status: 0.
                guard buffer.count == MemoryLayout<Int32>.size else {
                    throw GodwitError("local page store: only CLOSE is answered here")
                }
                buffer.initializeMemory(as: UInt8.self, repeating: 0)
                state.withLock { $0 = .ended("closed") }
                return
            case .ended(let why):
                throw GodwitError("local page store: \(why)")
            case .open:
                ready.wait()
            }
        }
    }

    public func finish() { end("closed") }

    public func abort() { end("aborted") }

    private func end(_ why: String) {
        state.withLock { if case .ended = $0 { return }; $0 = .ended(why) }
        ready.signal()
    }
}
