import Foundation

/// What only root may read: the state database (containers' config and environment), CRIU
/// images and page stores (containers' memory, so their secrets), the trust store. Modes
/// are set explicitly rather than by umask: the daemon's umask is what the containers it
/// starts inherit.
public enum OwnerOnly {
    public static let directoryMode: mode_t = 0o700
    public static let fileMode: mode_t = 0o600

    /// Creates `path` (and missing parents) 0700, or makes an existing one 0700: daemons
    /// before this one made the state directories 0711 and the image directories 0755.
    public static func directory(_ path: String) throws {
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: Int(directoryMode)])
        guard chmod(path, directoryMode) == 0 else { throw GodwitError.errno("chmod 0700 \(path)") }
    }

    /// Makes the regular files directly in `directory` 0600 (CRIU writes its images 0644,
    /// CR_FD_PERM in criu/include/crtools.h). Best effort: a file may vanish meanwhile.
    public static func restrictFiles(in directory: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            var info = stat()
            let path = directory + "/" + name
            if lstat(path, &info) == 0, info.st_mode & S_IFMT == S_IFREG { chmod(path, fileMode) }
        }
    }

    /// Creates `path` empty and 0600 if missing, else makes it 0600; for files another
    /// library opens later (SQLite copies the database's mode to its journal and WAL).
    public static func file(_ path: String) throws {
        let fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, fileMode)
        guard fd >= 0 else { throw GodwitError.errno("create \(path)") }
        defer { close(fd) }
        guard fchmod(fd, fileMode) == 0 else { throw GodwitError.errno("chmod 0600 \(path)") }
    }
}
