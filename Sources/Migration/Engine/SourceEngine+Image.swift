import API
import Foundation
import GodwitCore

extension SourceEngine {
    /// The "image" phase, for a destination that lacks the container's image: rsync of
    /// this host's image rootfs over the image channel (the checked `rsync --server` the
    /// filesystem sync uses), then a wait until the destination installed it, so that a
    /// refused or broken image rolls the move back here, before anything is frozen. Nothing
    /// to undo on this side: the destination's abort (registered at `begin`) removes its
    /// staging tree.
    func carryImage(_ session: any MigrationSession) async throws {
        let c = host.container
        guard let rootfs = c.imageRootfs else {
            throw GodwitError("\(peer.name) lacks the image of \(c.name) (\(c.imageFingerprint.prefix(12))) and this host can't send it")
        }
        let expected = c.imageBytes
        let progress = self.progress
        let peerName = peer.name
        try await step("image", expected: expected) { () -> ((), UInt64) in
            progress.note("\(peerName) lacks image '\(c.image)' (\(c.imageFingerprint.prefix(12))): sending it")
            let stats = try await blocking {
                try FilesystemSync.push(from: rootfs, channel: { try session.open(.image) }, spawnHelper: c.spawnHelper,
                                        progress: { done in progress.advance(UInt64(max(0, done)), expected: expected) })
            }
            // The destination checks and installs what arrived (a rename and a record) and
            // says so in its status; an abort there says why.
            let deadline = Self.now() + 120 * 1_000_000_000
            while true {
                let status = try await session.status()
                if status.imageInstalled == true { break }
                if status.phase == "aborted" {
                    throw GodwitError("\(peerName) did not take the image: \(status.reason ?? "it aborted the move")")
                }
                guard Self.now() < deadline else { throw GodwitError("\(peerName) did not install the image within 120 s") }
                try await Task.sleep(for: .milliseconds(100))
            }
            return ((), UInt64(max(0, stats.bytesSent)))
        }
    }
}
