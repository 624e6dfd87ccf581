import Checkpoint
import Foundation
import GodwitCore
import Memory
import Synchronization

/// Pre-copy's restore: while the source is frozen, fetch every page the store still lacks
/// (so that, as with a copy, nothing is left on the source when the tasks run), then
/// restore lazily behind `criu lazy-pages`, served from the local store only.
///
/// Why not rebuild CRIU's images and restore eagerly, as stop-and-copy does: writing the
/// whole memory into a pages image and having `criu restore` first-touch all of it is work
/// proportional to memory inside the freeze (about 0.9 s per GiB here). A lazy restore
/// maps the memory and lets lazy-pages fill it from the store while the container runs.
///
/// The price: until every page is in the tasks (about a second per GiB after the commit),
/// they depend on this daemon's proxy and lazy-pages. A daemon that dies in that window
/// loses the container, as with a lazy move; the recovery at start-up treats this kind
/// like a lazy one (never run on missing pages).
///
/// Concurrency model: composition of a LazyRestore (its own lock) and the source's page
/// session (`client`, handed over under a Mutex exactly once: to the commit's CLOSE or to
/// the abort's abandon).
public final class LocalLazyRestore: RestoreMethod, Sendable {
    public var kind: RestoreKind { .localLazy }
    private let lazy: LazyRestore
    private let client = Mutex<HandOff<PageServerClient>?>(nil)

    init(target: IncomingTarget, store: PageStore) {
        lazy = LazyRestore(target: target, store: store)
    }

    public var figures: IncomingFigures { lazy.figures }
    public var restoredPID: pid_t? { lazy.restoredPID }

    public func restore(pages fd: Int32, push: Int32?) throws -> pid_t {
        if let push { close(push) }
        let client = PageServerClient(connected: fd, peer: "source")
        self.client.withLock { $0 = HandOff(client) }
        let entries = try ImageRebuilder(directory: lazy.target.restore.imagesDirectory).lazyEntries()
        try lazy.fetchMissing(from: client, lazyEntries: entries)
        return try lazy.restore(upstream: LocalStoreUpstream(), push: nil, fromSource: false, lazy: entries)
    }

    public func commit() throws {
        try lazy.commit()
        guard let handed = client.withLock({ c -> HandOff<PageServerClient>? in defer { c = nil }; return c }) else { return }
        lazy.closeSource(handed)
    }

    public func waitUntilLocal(timeout: TimeInterval) -> IncomingFigures { lazy.waitUntilLocal(timeout: timeout) }

    public func abort() {
        lazy.abort()
        client.withLock { c -> HandOff<PageServerClient>? in defer { c = nil }; return c }?.value.abandon()
    }
}
