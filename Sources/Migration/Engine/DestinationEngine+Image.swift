import Foundation
import GodwitCore

extension DestinationEngine {
    /// The image channel: a peer may write an image tree here only when this host said it
    /// lacks the image (its answer to `begin`), only once, and only into the staging
    /// directory the host chose. rsync is the same checked `rsync --server` as for the
    /// container's files. The image is installed before the channel counts as done, so the
    /// restore (which waits for every transfer) finds it under images/<fingerprint>.
    func imageHandler(_ r: Receiving) throws -> @Sendable (Int32) -> Void {
        guard let staging = host.imageStaging else {
            throw GodwitError("migration \(id): \(host.hostName) has the container's image and announced no image transfer",
                              hint: "an image is sent only to a destination that asked for it")
        }
        guard claimImageChannel() else {
            throw GodwitError("migration \(id): the image channel was opened already")
        }
        r.transfers.enter()
        let host = host
        return { fd in
            defer { self.touch(); r.transfers.leave() }
            do {
                try FilesystemSync.serve(fd: fd, into: staging + "/rootfs")  // closes fd
                try host.imageArrived()
                self.imageWasInstalled()
            } catch {
                self.failed(.image, error)
                // Now, not at the restore: the source waits for the image before it goes on,
                // and reads why from the status.
                let reason = (error as? GodwitError)?.message ?? "\(error)"
                Task { await self.abort(reason: "the image did not arrive on \(host.hostName): \(reason)") }
            }
        }
    }
}
