import Foundation

/// Writes a file so that readers (and the next start after a crash) see either the old
/// content or the new, never a torn mix: temp file in the same directory, fsync, rename,
/// fsync of the directory. The mode is set at creation, so a private key is never readable
/// by others, not even for the moment between write and chmod.
///
/// `durable: false` skips both fsyncs: for files that only need to survive the daemon's
/// death, not the machine's, and are written where a disk flush would cost (the move
/// journals, written while the container is frozen).
public enum AtomicFile {
    public static func write(_ data: Data, to url: URL, mode: mode_t = 0o600, durable: Bool = true) throws {
        let directory = url.deletingLastPathComponent()
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw GodwitError("cannot create \(directory.path): \(error.localizedDescription)",
                              hint: "check that the state directory is writable")
        }
        let temporary = directory.appendingPathComponent(".\(url.lastPathComponent).\(getpid()).\(UInt32.random(in: 0 ... .max)).tmp")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw GodwitError.errno("open(\(temporary.path))").with("file", url.path) }
        var closed = false
        defer {
            if !closed { close(fd) }
            unlink(temporary.path)  // no-op after a successful rename
        }
        // open() applies the umask; fchmod makes the mode exactly what was asked.
        guard fchmod(fd, mode) == 0 else { throw GodwitError.errno("fchmod(\(temporary.path))") }
        try data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    throw GodwitError.errno("write(\(temporary.path))", hint: "is the disk full?")
                }
                offset += written
            }
        }
        if durable { guard fsync(fd) == 0 else { throw GodwitError.errno("fsync(\(temporary.path))") } }
        close(fd)
        closed = true
        guard rename(temporary.path, url.path) == 0 else {
            throw GodwitError.errno("rename(\(temporary.path), \(url.path))")
        }
        let dirFD = durable ? open(directory.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1
        if dirFD >= 0 {
            // Makes the rename itself durable; failure here loses nothing already written.
            fsync(dirFD)
            close(dirFD)
        }
    }

    /// nil when the file does not exist; any other failure is an error (a state file we
    /// cannot read must not be mistaken for an empty one).
    public static func read(_ url: URL) throws -> Data? {
        guard FileManager.default.fileExists(atPath: url.path) else { return nil }
        do {
            return try Data(contentsOf: url)
        } catch {
            throw GodwitError("cannot read \(url.path): \(error.localizedDescription)",
                              hint: "check the file's permissions (godwitd runs as root)")
        }
    }
}
