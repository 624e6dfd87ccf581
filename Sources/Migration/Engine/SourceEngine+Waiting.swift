import API
import Checkpoint
import Foundation
import GodwitCore
import Memory

// The source's two waits on the destination, each measured by progress, not by time: the
// restore it follows, and the commit it confirms past the point of no return.
extension SourceEngine {
    /// How long the destination may show no progress (no status change, no byte through
    /// the relay, no answer) before the source gives up. Progress, not duration: a restore
    /// that fetches 1 GiB over 100 Mbit/s takes 90 s and must not be cut at any fixed time.
    public static let stallSeconds = 120.0

    /// Starts the destination's restore and follows it until the tasks are restored (stopped).
    func followRestore(_ session: any MigrationSession, relay: PageServerRelay) async throws -> IncomingMigrationStatus {
        var status = try await session.beginRestore()
        var lastChange = Self.now()
        var lastBytes = relay.bytesToDestination
        var lastPhase = status.phase
        var lastError: String?
        while status.phase == "receiving" || status.phase == "restoring" {
            // The container is frozen while this polls: a restored state seen late is
            // downtime, so look often (a status answer is a small local request there).
            try await Task.sleep(for: .milliseconds(10))
            do {
                status = try await session.status()
                lastError = nil
            } catch {
                lastError = (error as? GodwitError)?.message ?? "\(error)"
            }
            let bytes = relay.bytesToDestination
            if bytes != lastBytes || status.phase != lastPhase {
                lastChange = Self.now()
                lastBytes = bytes
                lastPhase = status.phase
            }
            // The page channel is the restore's lifeline: once it broke (the destination or
            // the link went), no status answer can make the restore succeed.
            if relay.hasEnded, !relay.committed, status.phase != "restored" {
                // A failed restore closes the channel itself: its reason beats "broke".
                if let last = try? await session.status(), last.phase == "aborted" { status = last; break }
                throw GodwitError("the page channel to \(peer.name) broke during the restore"
                                  + (lastError.map { " (\($0))" } ?? ""))
            }
            if Double(Self.now() - lastChange) / 1e9 > Self.stallSeconds {
                throw GodwitError("the restore on \(peer.name) made no progress for \(Int(Self.stallSeconds)) s"
                                  + (lastError.map { " (last error: \($0))" } ?? ""))
            }
        }
        guard status.phase == "restored" else {
            throw GodwitError("restore on \(peer.name) failed: \(status.reason ?? status.phase)",
                              hint: "the destination keeps CRIU's log in its migrations directory until its next start")
        }
        return status
    }

    /// Post-copy and hybrid after the commit: the rest of memory streams from this host's
    /// page relay; done when the destination has every page ("done"), lost when the relay
    /// gave up or the destination says so.
    func followBackgroundTransfer(_ session: any MigrationSession, relay: PageServerRelay,
                                  after commitStatus: IncomingMigrationStatus) async throws -> IncomingMigrationStatus {
        var status = commitStatus
        // The peer's number: checked, never trusted to convert or multiply.
        let lazyPages = UInt64(exactly: max(0, status.lazyPages ?? 0)) ?? 0
        let (product, overflow) = lazyPages.multipliedReportingOverflow(by: systemPageSize)
        let expected = overflow ? 0 : product
        progress.begin("pages to \(peer.name)", expected: expected > 0 ? expected : nil)
        // Lack of progress ends the wait, not its length; a status query that fails now
        // and then (a busy or briefly unreachable destination) is asked again.
        var lastChange = Self.now()
        var lastBytes = relay.bytesToDestination
        var lastError: String?
        var relayEndedAt: UInt64?
        var wasDown = false
        var downNoted = -1
        let poll = StatusPoll(session)
        while status.phase == "fetching" || status.phase == "restored" {
            try? await Task.sleep(for: .milliseconds(100))
            let bytes = relay.bytesToDestination
            if let down = relay.linkDown {
                // The relay reconnects within the grace period: that wait is not silence.
                // Said once a second: the note is always shown.
                if Int(down.seconds) != downNoted {
                    downNoted = Int(down.seconds)
                    progress.note("waiting for the link to \(peer.name): the page channel is down since \(Int(down.seconds)) s "
                                  + "(grace \(host.container.config.postCopyGraceSeconds) s): \(down.reason)")
                }
                wasDown = true
                lastChange = Self.now()
            } else {
                if wasDown, !relay.hasEnded { progress.note("the page channel to \(peer.name) is back (reconnect \(relay.reconnects))") }
                wasDown = false
                downNoted = -1
                progress.advance(bytes, expected: expected > 0 ? expected : nil)
            }
            switch poll.next() {
            case .success(let answer)?:
                status = answer
                lastError = nil
            case .failure(let error)?:
                lastError = (error as? GodwitError)?.message ?? "\(error)"
            case nil where poll.waitingSeconds > 5:
                lastError = "no answer from \(peer.name) for \(Int(poll.waitingSeconds)) s"
            case nil:
                break
            }
            if bytes != lastBytes || lastError == nil && status.phase != "fetching" { lastChange = Self.now(); lastBytes = bytes }
            // The relay gave up (the link stayed down past the grace period, or CRIU's
            // page server is gone): no page can come from here any more. A destination
            // that had every page says done at once; otherwise the container is lost.
            if let failure = relay.failure, status.phase == "fetching" || lastError != nil {
                let at = relayEndedAt ?? Self.now()
                relayEndedAt = at
                if Double(Self.now() - at) / 1e9 > 10 {
                    pageSessionOver = true
                    // The destination would otherwise wait out its grace period with
                    // its tasks stuck on pages that can't come.
                    await session.sourceLost()
                    throw GodwitError("the container was lost after its commit: \(failure)")
                }
            }
            // With the page channel gone nothing more can come from here: only the
            // destination's last word is awaited, for a shorter while.
            let limit = relay.hasEnded ? Self.stallSeconds / 4 : Self.stallSeconds
            if Double(Self.now() - lastChange) / 1e9 > limit, let lastError {
                throw GodwitError("\(peer.name) stopped answering while pages were still arriving: \(lastError)")
            }
        }
        // Only "done" is a move; anything else means the destination no longer runs it.
        guard status.phase == "done" else {
            pageSessionOver = true
            throw GodwitError("the container was lost after its commit: \(status.lost ?? status.reason ?? status.phase)")
        }
        return status
    }

    /// Local-lazy restores (pre-copy): after the commit the destination fills the tasks'
    /// memory from its own store; nothing more comes from here. The move is done when it
    /// says so ("done"), so that a finished move means a container that no longer depends
    /// on the destination's daemon. Stalls (no answer, no change) end the wait as progress
    /// does in every other wait.
    func waitUntilLoaded(_ session: any MigrationSession, after commitStatus: IncomingMigrationStatus) async throws -> IncomingMigrationStatus {
        var status = commitStatus
        var lastChange = Self.now()
        var lastServed = status.pagesServedLocally ?? 0
        var lastError: String?
        while status.phase == "fetching" {
            try? await Task.sleep(for: .milliseconds(50))
            do {
                status = try await session.status()
                lastError = nil
            } catch {
                lastError = (error as? GodwitError)?.message ?? "\(error)"
            }
            let served = status.pagesServedLocally ?? 0
            if served != lastServed { lastServed = served; lastChange = Self.now() }
            if Double(Self.now() - lastChange) / 1e9 > Self.stallSeconds {
                throw GodwitError("\(peer.name) stopped answering while it loaded the container's memory: \(lastError ?? "no progress")")
            }
        }
        guard status.phase == "done" else {
            throw GodwitError("the container was lost after its commit: \(status.lost ?? status.reason ?? status.phase)")
        }
        return status
    }

    /// How long the source keeps asking a destination it can't reach to commit, after its
    /// own tasks are doomed. Past it the container is reported lost (it may still run there:
    /// the report says to look).
    public static let commitGraceSeconds = 300.0

    /// Past the point of no return: the destination must run the container. One lost request
    /// must not lose it, nor may `godwit operation cancel`: the commit is asked again (it is
    /// idempotent) and confirmed by a status query, in a task the move's cancellation does
    /// not reach. Only the destination saying it no longer holds the container, or the
    /// grace period passing without an answer, ends it as a failure.
    func confirmCommit(_ session: any MigrationSession) async throws -> IncomingMigrationStatus {
        let peerName = peer.name
        return try await Task.detached { () throws -> IncomingMigrationStatus in
            let start = SourceEngine.now()
            var wait = 0.25
            var lastError = "no answer"
            while true {
                do {
                    let status = try await session.commit()
                    if ["fetching", "done"].contains(status.phase) { return status }
                    lastError = "the destination answered \(status.phase)"
                } catch {
                    lastError = (error as? GodwitError)?.message ?? "\(error)"
                }
                // Did it take effect although the answer was lost?
                if let status = try? await session.status() {
                    switch status.phase {
                    case "fetching", "done":
                        return status
                    case "aborted", "lost":
                        throw GodwitError("\(peerName) no longer holds the container: \(status.lost ?? status.reason ?? status.phase)")
                    default:
                        break
                    }
                }
                if Double(SourceEngine.now() - start) / 1e9 > SourceEngine.commitGraceSeconds {
                    throw GodwitError("\(peerName) did not confirm the commit within \(Int(SourceEngine.commitGraceSeconds)) s: \(lastError)")
                }
                try? await Task.sleep(for: .seconds(wait))
                wait = min(wait * 2, 5)
            }
        }.value
    }
}

/// Where a test can make the source fail, to prove the rollback from every state.
///
/// Also the daemon's fault injection for end-to-end tests and `godwit bench faults`:
/// `GODWIT_FAULT=fail:frozen` or `pause:frozen:30` in godwitd's environment (see
/// `SourceHooks(fault:)`). A pause is a window in a known phase for a harness to act in
/// (kill a daemon, cut the link); `onReach` tells it the window opened, so it needn't
/// guess with sleeps. Off unless set: a point costs one optional check.
public struct SourceHooks: Sendable {
    /// The first four are the engine's states (the rollback test walks them); the others
    /// are phases inside them that the fault matrix needs.
    public enum Point: String, Sendable, CaseIterable {
        case transferring, frozen, restoring, beforeCommit
        /// Before the first call to the destination (its capabilities).
        case negotiation
        /// At the start of a pre-copy round, the container running (`preCopyRound2`: round 2).
        case preCopyRound
        /// Frozen, before the images go to the destination.
        case images
        /// Past the point of no return: the source's tasks are doomed, the destination not
        /// yet told to run them.
        case committing
        /// After a lazy commit, while the remaining pages stream to the destination.
        case pageTransfer
    }
    public var failAt: Point?
    /// Sleep this long on reaching `pauseAt` (a window for a test to kill the daemon).
    public var pauseAt: Point?
    public var pauseSeconds = 0.0
    /// Which pre-copy round `preCopyRound` means (1 is the first, full one).
    public var round = 1
    public var onReach: (@Sendable (Point) -> Void)?
    public init(failAt: Point? = nil) { self.failAt = failAt }

    /// "fail:POINT" or "pause:POINT:SECONDS"; anything else is no fault. POINT may end in a
    /// round number for `preCopyRound` ("preCopyRound2").
    public init(fault: String?) {
        let words = (fault ?? "").trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ":").map(String.init)
        guard words.count >= 2 else { return }
        var name = words[1]
        var round = 1
        if name.hasPrefix(Point.preCopyRound.rawValue), name.count > Point.preCopyRound.rawValue.count {
            guard let n = Int(name.dropFirst(Point.preCopyRound.rawValue.count)), n >= 1, n <= 1000 else { return }
            round = n
            name = Point.preCopyRound.rawValue
        }
        guard let point = Point(rawValue: name) else { return }
        self.round = round
        if words[0] == "fail" { failAt = point }
        if words[0] == "pause", words.count == 3, let seconds = Double(words[2]), seconds.isFinite, seconds >= 0, seconds <= 3600 {
            pauseAt = point
            pauseSeconds = seconds
        }
    }

    /// Whether any fault is set (else the daemon doesn't announce points).
    public var isSet: Bool { failAt != nil || pauseAt != nil }

    func reach(_ point: Point) async throws {
        onReach?(point)
        if failAt == point { throw GodwitError("injected failure at \(point.rawValue)") }
        if pauseAt == point { try? await Task.sleep(for: .seconds(pauseSeconds)) }
    }

    /// Pre-copy rounds run on a blocking thread: announced and paused there. A failure
    /// injected here is thrown by the round's thread.
    func reachRound(_ n: Int) throws {
        guard n == round, failAt == .preCopyRound || pauseAt == .preCopyRound else { return }
        onReach?(.preCopyRound)
        if failAt == .preCopyRound { throw GodwitError("injected failure at preCopyRound\(n)") }
        Thread.sleep(forTimeInterval: pauseSeconds)
    }
}

/// The destination's status, asked one query at a time and never waited on: while the link
/// is down an HTTPS request hangs for its whole timeout, and the loop that watches the page
/// channel and reports "waiting for the link" must go on meanwhile.
///
/// Concurrency model: `next()` from the engine's loop; each query runs in a Task of its own
/// and leaves its answer in `state` (a Locked), where the next `next()` takes it.
final class StatusPoll: Sendable {
    private struct State { var answer: Result<IncomingMigrationStatus, any Error>?; var askedAt: UInt64? }
    private let state = Locked(State())
    private let session: any MigrationSession

    init(_ session: any MigrationSession) { self.session = session }

    /// The answer that arrived since the last call, if any; asks again when no query is
    /// in flight.
    func next() -> Result<IncomingMigrationStatus, any Error>? {
        let (answer, ask) = state.withLock { s -> (Result<IncomingMigrationStatus, any Error>?, Bool) in
            let answer = s.answer
            s.answer = nil
            guard s.askedAt == nil else { return (answer, false) }
            s.askedAt = SourceEngine.now()
            return (answer, true)
        }
        if ask {
            Task { [session, state] in
                let answer: Result<IncomingMigrationStatus, any Error>
                do { answer = .success(try await session.status()) } catch { answer = .failure(error) }
                state.withLock { $0 = State(answer: answer, askedAt: nil) }
            }
        }
        return answer
    }

    /// How long the query in flight has been waiting for its answer (0 when none).
    var waitingSeconds: Double {
        guard let at = state.withLock({ $0.askedAt }) else { return 0 }
        return Double(SourceEngine.now() - at) / 1e9
    }
}
