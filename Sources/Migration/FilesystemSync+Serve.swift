import Foundation
import GodwitCore

extension FilesystemSync {
    /// Long options the destination lets a peer's rsync ask for: what `push` sends, plus
    /// harmless variants. Nothing that names a file (`--log-file=`, `--temp-dir=`,
    /// `--files-from=`, `--backup-dir=`...), runs a program (`--rsync-path=`), or turns the
    /// server into a sender (`--sender`: the peer would read our files).
    static let allowedLongOptions: Set<String> = [
        "--numeric-ids", "--delete", "--delete-before", "--delete-during", "--delete-delay", "--delete-after",
        "--stats", "--inplace", "--sparse", "--whole-file", "--no-whole-file", "--checksum", "--ignore-times",
        "--hard-links", "--acls", "--xattrs", "--recursive", "--links", "--perms", "--owner", "--group",
        "--devices", "--specials", "--times", "--super", "--partial", "--compress",
    ]

    /// The server-side argv rsync asked its remote shell to run, checked, with the peer's
    /// destination path replaced by `directory`. Expected shape:
    /// `[host, "rsync", "--server", options..., ".", path]`.
    public static func serverArguments(validating argv: [String], into directory: String) throws -> [String] {
        func refuse(_ why: String) -> GodwitError {
            GodwitError("refused the peer's rsync command: \(why)",
                        hint: "only `rsync --server` receiving into the container's directory is allowed",
                        context: [("argv", argv.joined(separator: " ").prefix(300).description)])
        }
        guard argv.count >= 5 else { throw refuse("too short") }
        guard argv[1] == "rsync", argv[2] == "--server" else { throw refuse("not `rsync --server`") }
        guard argv[argv.count - 2] == "." else { throw refuse("expected `. PATH` at the end") }
        let path = argv[argv.count - 1]
        // The path is never used, but one that tries to climb out says the peer is hostile
        // or confused: refuse rather than guess.
        guard path.hasPrefix("/"), !path.split(separator: "/").contains(".."), !path.contains("\0") else {
            throw refuse("destination path '\(path)' escapes the container's directory")
        }
        let options = Array(argv[3..<(argv.count - 2)])
        for option in options {
            if option == "--sender" { throw refuse("--sender would make this host send its files") }
            if option.hasPrefix("--") {
                // --timeout=N (an I/O timeout, seconds) is the one option with a value.
                let isTimeout = option.hasPrefix("--timeout=") && !option.dropFirst(10).isEmpty
                    && option.dropFirst(10).allSatisfy { $0.isASCII && $0.isNumber }  // not "½" or "٣"
                guard isTimeout || allowedLongOptions.contains(option) else { throw refuse("option \(option) is not allowed") }
            } else {
                // rsync's compact server flags: "-logDtpHAXre.iLsfxCIvu" (letters, one '.'
                // before the protocol's capability letters).
                let body = option.dropFirst()
                guard option.hasPrefix("-"), !body.isEmpty, body.filter({ $0 == "." }).count <= 1,
                      body.allSatisfy({ $0 == "." || ($0.isASCII && $0.isLetter) }) else {
                    throw refuse("argument \(option) is not a flag")
                }
            }
        }
        return ["rsync", "--server"] + options + [".", directory]
    }

    /// Destination side: reads the tunnel's command line from `fd` (a peer stream), checks it
    /// and runs `rsync --server` on the fd into `directory`. Takes ownership of `fd` (closed
    /// when done). Blocking: run on a thread.
    public static func serve(fd: Int32, into directory: String) throws {
        defer { close(fd) }
        let line = try readLine(fd)
        guard let argv = try? JSONDecoder().decode([String].self, from: line) else {
            throw GodwitError("the peer's rsync tunnel did not announce a command (got \(line.count) bytes of something else)")
        }
        let server = try serverArguments(validating: argv, into: directory)
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let rsync = try SyncProcess(server, stdin: fd, stdout: fd)
        let (status, stderr) = rsync.wait()
        // The sender tells its receiver about files that vanished while it ran, and both
        // exit 24; the source accepts that for a sync while the container runs (push), so
        // must this side, or a file replaced by rename fails the whole move.
        guard status == 0 || status == FilesystemSync.vanishedFiles else {
            throw GodwitError("rsync --server into \(directory) failed (exit \(status)): \(stderr.lastLine)",
                              hint: "the source's rsync error, if any, says more")
        }
    }

    /// Reads up to the first newline, byte by byte: what follows belongs to rsync.
    static func readLine(_ fd: Int32, limit: Int = 64 * 1024) throws -> Data {
        var line = Data()
        var byte: UInt8 = 0
        while true {
            let n = read(fd, &byte, 1)
            if n < 0 && errno == EINTR { continue }
            if n < 0 { throw GodwitError.errno("reading the rsync tunnel's command line") }
            if n == 0 { throw GodwitError("the peer closed the rsync channel before sending its command line") }
            if byte == UInt8(ascii: "\n") { return line }
            line.append(byte)
            if line.count > limit { throw GodwitError("the rsync tunnel's command line exceeds \(limit) bytes") }
        }
    }
}
