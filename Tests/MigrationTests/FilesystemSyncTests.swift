import Foundation
import GodwitCore
import Testing
@testable import Migration

/// rsync through `godwit-spawn tunnel` and a stream socket standing in for the peer stream:
/// the same code paths as a migration, without the network.
@Suite(.serialized) struct FilesystemSyncTests {
    let root: String

    init() throws {
        root = "/var/tmp/godwit-fssync-\(getpid())-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    }

    /// One sync: the source pushes, the destination serves on the other end of a socketpair.
    func sync(_ source: String, _ destination: String) throws -> SyncStats {
        var fds: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw GodwitError.errno("socketpair")
        }
        let serverFd = fds[1]
        let served = ServeResult()
        let thread = Thread { served.finish(Result { try FilesystemSync.serve(fd: serverFd, into: destination) }) }
        thread.start()
        let stats: SyncStats
        var handed = false
        do {
            stats = try FilesystemSync.push(from: source, channel: { handed = true; return fds[0] },
                                            spawnHelper: MigrationLab.spawnHelper())
        } catch {
            // push closes the channel fd it was given; if it never asked, unblock serve here.
            if !handed { close(fds[0]) }
            _ = served.wait()
            throw error
        }
        try served.wait().get()
        return stats
    }

    func sh(_ script: String) throws { try Command.check(["sh", "-ec", script]) }

    func stat(_ path: String) throws -> stat {
        var info = Glibc.stat()
        guard lstat(path, &info) == 0 else { throw GodwitError.errno("lstat \(path)") }
        return info
    }

    @Test func aTreeArrivesWholeAndASecondSyncAppliesChanges() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let src = root + "/src", dst = root + "/dst"
        try sh("""
            mkdir -p \(src)/etc \(src)/var/lib \(src)/dev
            printf 'hello\\n' > \(src)/etc/hostname
            head -c 3000000 /dev/urandom > \(src)/var/lib/blob
            printf 'gone soon\\n' > \(src)/etc/obsolete
            ln -s ../etc/hostname \(src)/var/link
            ln \(src)/etc/hostname \(src)/etc/hardlink
            mknod \(src)/dev/whiteout c 0 0
            chmod 0640 \(src)/etc/hostname
            chown 1234:5678 \(src)/var/lib/blob
            chmod 4755 \(src)/var/lib
            """)
        let first = try sync(src, dst)
        #expect(first.bytesSent > 3_000_000)
        #expect(try String(contentsOfFile: dst + "/etc/hostname", encoding: .utf8) == "hello\n")
        #expect(try FileManager.default.destinationOfSymbolicLink(atPath: dst + "/var/link") == "../etc/hostname")
        #expect(try stat(dst + "/etc/hostname").st_ino == stat(dst + "/etc/hardlink").st_ino)
        let device = try stat(dst + "/dev/whiteout")
        #expect(device.st_mode & S_IFMT == S_IFCHR && device.st_rdev == 0)
        #expect(try stat(dst + "/etc/hostname").st_mode & 0o7777 == 0o640)
        #expect(try stat(dst + "/var/lib").st_mode & 0o7777 == 0o4755)
        let blob = try stat(dst + "/var/lib/blob")
        #expect(blob.st_uid == 1234 && blob.st_gid == 5678)
        try sh("cmp \(src)/var/lib/blob \(dst)/var/lib/blob")

        // Second round: a deletion and a change, and little to send for the unchanged blob.
        try sh("rm \(src)/etc/obsolete; printf 'renamed\\n' > \(src)/etc/hostname")
        let second = try sync(src, dst)
        #expect(!FileManager.default.fileExists(atPath: dst + "/etc/obsolete"))
        #expect(try String(contentsOfFile: dst + "/etc/hostname", encoding: .utf8) == "renamed\n")
        #expect(second.bytesSent < 1_000_000)
    }

    @Test func theDestinationRefusesCommandsOutsideTheAllowlist() throws {
        defer { try? FileManager.default.removeItem(atPath: root) }
        let good = ["godwit", "rsync", "--server", "-logDtpHAXre.iLsfxCIvu", "--numeric-ids", "--delete", ".", "/"]
        #expect(try FilesystemSync.serverArguments(validating: good, into: "/dst")
            == ["rsync", "--server", "-logDtpHAXre.iLsfxCIvu", "--numeric-ids", "--delete", ".", "/dst"])
        #expect(try FilesystemSync.serverArguments(validating: ["godwit", "rsync", "--server", "--timeout=30", ".", "/"], into: "/d")
            == ["rsync", "--server", "--timeout=30", ".", "/d"])
        let refused: [[String]] = [
            ["godwit", "rsync", "--server", "--sender", "-logDtpre.iLsfxCIvu", ".", "/"],
            ["godwit", "rsync", "--server", "-logDtpre.iLsfxCIvu", ".", "/../../etc"],
            ["godwit", "rsync", "--server", "--rsync-path=/bin/sh", ".", "/"],
            ["godwit", "rsync", "--server", "--log-file=/etc/passwd", ".", "/"],
            ["godwit", "sh", "-c", "id", ".", "/"],
            ["godwit", "rsync", "--server", "-e;reboot", ".", "/"],
            ["godwit", "rsync", "--server", "/etc", ".", "/"],
            ["godwit", "rsync", "--server", "--timeout=½", ".", "/"],
            ["godwit", "rsync", "--server", "--timeout=٣٠", ".", "/"],
        ]
        for argv in refused {
            #expect(throws: GodwitError.self, "\(argv)") { try FilesystemSync.serverArguments(validating: argv, into: "/dst") }
        }
        // Through serve: the refusal is the error, and nothing is written.
        var fds: [Int32] = [-1, -1]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0)
        let line = try JSONEncoder().encode(refused[0]) + Data("\n".utf8)
        _ = line.withUnsafeBytes { write(fds[0], $0.baseAddress, $0.count) }
        let error = #expect(throws: GodwitError.self) { try FilesystemSync.serve(fd: fds[1], into: root + "/never") }
        #expect(error?.message.contains("--sender") == true)
        #expect(!FileManager.default.fileExists(atPath: root + "/never"))
        close(fds[0])
    }

    @Test func statsAreParsed() {
        let text = "Number of files: 3\nTotal bytes sent: 1,234,567\nTotal bytes received: 89\n"
        #expect(FilesystemSync.statistic("Total bytes sent", in: text) == 1_234_567)
        #expect(FilesystemSync.statistic("Total bytes received", in: text) == 89)
    }
}

/// The destination's outcome, handed from its thread to the test.
final class ServeResult: @unchecked Sendable {
    private var result: Result<Void, any Error>?
    private let done = DispatchSemaphore(value: 0)

    func finish(_ outcome: Result<Void, any Error>) { result = outcome; done.signal() }

    func wait() -> Result<Void, any Error> {
        done.wait()
        done.signal()
        return result!
    }
}
