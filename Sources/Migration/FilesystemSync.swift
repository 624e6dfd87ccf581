import Foundation
import GodwitCore
import Synchronization

/// What one filesystem sync moved, from rsync's `--stats`.
public struct SyncStats: Sendable, Equatable {
    /// rsync's "Total bytes sent" (protocol bytes, compressed deltas included).
    public var bytesSent: Int64
    /// rsync's "Total bytes received".
    public var bytesReceived: Int64
}

/// Syncs a container's root filesystem to another host with rsync, as LXD does, over a
/// Godwit peer stream instead of ssh: the source's rsync runs `godwit-spawn tunnel` as its
/// "remote shell", the tunnel's bytes go through the authenticated channel, and the
/// destination runs `rsync --server` on the channel's fd. The destination never runs what
/// the peer asks for: it checks the announced command against an allowlist and always
/// writes into its own directory.
public enum FilesystemSync {
    /// rsync flags for a faithful copy of a root filesystem: hard links, ACLs, xattrs,
    /// devices, numeric ownership (ids must not be remapped through this host's passwd).
    /// --timeout: a peer that vanished (daemon killed, link cut) must end the sync, whose
    /// final round runs while the container is frozen, instead of stalling it for ever.
    /// rsync's exit status for "some files vanished before they could be transferred".
    static let vanishedFiles: Int32 = 24

    /// The xattr filter: an overlay upper's `origin`/`uuid` xattrs hold file handles of this
    /// host's lower layer (overlay's index=on writes them). The destination's image is
    /// another copy, so its overlay would refuse the upper with ESTALE ("Stale file handle").
    /// Whiteouts and `opaque` xattrs, which carry the container's deletions, still travel.
    public static let rsyncOptions = ["-aHAX", "--numeric-ids", "--delete", "--stats", "--timeout=30",
                                      "--filter=-x trusted.overlay.origin", "--filter=-x trusted.overlay.uuid"]

    // MARK: source side

    /// Pushes `directory`'s contents to the peer. `channel` opens the peer stream (its fd is
    /// closed here); `spawnHelper` is the path of godwit-spawn. Blocking: run on a thread.
    /// `progress`, when given, gets the bytes transferred so far as rsync reports them
    /// (`--info=progress2`, a client-side option the destination never sees).
    public static func push(from directory: String, channel: () throws -> Int32, spawnHelper: String,
                            extraOptions: [String] = [], progress: (@Sendable (Int64) -> Void)? = nil) throws -> SyncStats {
        guard !spawnHelper.contains(where: \.isWhitespace) else {
            throw GodwitError("the godwit-spawn path may not contain spaces (rsync splits its -e command): \(spawnHelper)")
        }
        var template = Array("/tmp/godwit-sync-XXXXXX".utf8CString)
        guard let made = mkdtemp(&template) else { throw GodwitError.errno("mkdtemp for the rsync tunnel") }
        let temp = String(cString: made)
        defer { try? FileManager.default.removeItem(atPath: temp) }
        let socketPath = temp + "/tunnel.sock"
        let listener = try listenUnix(socketPath)
        defer { close(listener) }
        let source = directory.hasSuffix("/") ? directory : directory + "/"
        let argv = ["rsync"] + rsyncOptions + extraOptions + (progress == nil ? [] : ["--info=progress2"])
            + ["-e", "\(spawnHelper) tunnel --socket \(socketPath) --", source, "godwit:/"]
        var stdoutFds: [Int32] = [-1, -1]
        guard pipe2(&stdoutFds, O_CLOEXEC) == 0 else { throw GodwitError.errno("pipe for rsync's output") }
        let rsync: SyncProcess
        do {
            rsync = try SyncProcess(argv, stdin: -1, stdout: stdoutFds[1])
        } catch {
            close(stdoutFds[0]); close(stdoutFds[1])
            throw error
        }
        close(stdoutFds[1])
        let output = Drain(stdoutFds[0], progress: progress)
        func failed(_ why: String) -> GodwitError {
            let (status, stderr) = rsync.wait()
            let detail = stderr.lastLine.isEmpty ? "" : ": \(stderr.lastLine)"
            return GodwitError("rsync of \(directory) \(why) (rsync exit \(status))\(detail)")
        }
        // rsync starts the tunnel, which connects here; if rsync dies first, say why.
        let tunnel: Int32
        do {
            tunnel = try acceptTunnel(listener, while: rsync)
        } catch {
            rsync.kill()
            throw failed("did not start its tunnel").with("error", "\(error)")
        }
        defer { close(tunnel) }
        let peer: Int32
        do {
            peer = try channel()
        } catch {
            // The tunnel is rsync's child and holds its stderr, which `wait` reads to EOF;
            // it lives until its socket ends. Ended first, or the move hung here for good
            // when the destination's daemon had died (found by the fault matrix).
            shutdown(tunnel, Int32(SHUT_RDWR))
            rsync.kill()
            _ = rsync.wait()
            throw GodwitError.wrap(error, doing: "opening the filesystem sync channel for \(directory)")
        }
        defer { close(peer) }
        // The relay on its own thread: rsync's exit is the end of the sync, even when the
        // tunnel it leaves behind (or a dead channel) would keep the relay waiting.
        let relay = Locked<Result<(aToB: Int64, bToA: Int64), any Error>>(.failure(GodwitError("relay did not run")))
        let relayDone = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let outcome = Result { try SocketRelay.run(tunnel, peer, label: "rsync tunnel of \(directory)") }
            relay.withLock { $0 = outcome }
            relayDone.signal()
        }
        let (status, stderr) = rsync.wait()
        if relayDone.wait(timeout: .now() + 5) == .timedOut {
            shutdown(tunnel, Int32(SHUT_RDWR))
            shutdown(peer, Int32(SHUT_RDWR))
            relayDone.wait()
        }
        let relayed = relay.withLock { $0 }
        let stats = output.text()
        // 24: files vanished between rsync's listing and their transfer. Expected while the
        // container runs (a program replacing a file by rename); the final sync, with every
        // task held, sees no such file, and whatever vanished is deleted there by --delete.
        guard status == 0 || status == Self.vanishedFiles else {
            let why = stderr.lastLine.isEmpty ? ((try? relayed.get()) == nil ? "\(relayed)" : "") : stderr.lastLine
            throw GodwitError("rsync of \(directory) to the peer failed (exit \(status)): \(why)",
                              hint: "the destination's log says why its side stopped, if it did")
        }
        _ = try relayed.get()
        return SyncStats(bytesSent: statistic("Total bytes sent", in: stats),
                         bytesReceived: statistic("Total bytes received", in: stats))
    }

    /// "Total bytes sent: 1,234,567" → 1234567 (0 when missing).
    static func statistic(_ name: String, in text: String) -> Int64 {
        // Any line break: progress lines end in "\r", and "\r\n" is one Character.
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix(name + ":") {
            let digits = line.dropFirst(name.count + 1).filter(\.isNumber)
            return Int64(digits) ?? 0
        }
        return 0
    }

    static func listenUnix(_ path: String) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw GodwitError.errno("socket for the rsync tunnel") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else {
            close(fd)
            throw GodwitError("tunnel socket path too long: \(path)")
        }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        // The directory is 0700 (mkdtemp): only root reaches the socket.
        guard bound == 0, listen(fd, 1) == 0 else {
            let error = GodwitError.errno("bind/listen \(path)")
            close(fd)
            throw error
        }
        return fd
    }

    /// Waits for the tunnel's connection, giving up if rsync exits or after 60 s.
    static func acceptTunnel(_ listener: Int32, while rsync: SyncProcess) throws -> Int32 {
        for _ in 0..<600 {
            var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            if Glibc.poll(&entry, 1, 100) > 0 {
                let fd = accept4(listener, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
                if fd >= 0 { return fd }
            }
            if let status = rsync.poll() {
                throw GodwitError("rsync exited (status \(status)) before connecting its tunnel")
            }
        }
        throw GodwitError("rsync's tunnel did not connect within 60 s")
    }
}

/// Reads a descriptor to EOF on its own thread (rsync's --stats output), then closes it.
///
/// Concurrency model: the reader thread owns `fd` and appends to `data` (a Mutex) until
/// EOF, then signals `done`; `text()` waits for that and reads `data` (any thread, any
/// number of times: it passes the signal on).
final class Drain: Sendable {
    private let data = Mutex(Data())
    private let done = DispatchSemaphore(value: 0)

    init(_ fd: Int32, progress: (@Sendable (Int64) -> Void)? = nil) {
        Thread.detachNewThread { [self] in
            var buffer = [UInt8](repeating: 0, count: 16384)
            var lines = ProgressLines()
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                data.withLock { $0.append(contentsOf: buffer[0..<n]) }
                if let progress, let bytes = lines.feed(buffer[0..<n]) { progress(bytes) }
            }
            close(fd)
            done.signal()
        }
    }

    func text() -> String {
        done.wait()
        done.signal()
        return data.withLock { String(decoding: $0, as: UTF8.self) }
    }
}

/// rsync's `--info=progress2` lines ("  1,234,567  45%  12.34MB/s  0:00:01 (xfr#3, ...)",
/// each ended by "\r"): the bytes transferred so far, from the last complete line of a chunk.
struct ProgressLines {
    private var partial: [UInt8] = []

    mutating func feed(_ chunk: ArraySlice<UInt8>) -> Int64? {
        var latest: Int64?
        for byte in chunk {
            if byte == 0x0D || byte == 0x0A {
                if let value = Self.bytes(partial) { latest = value }
                partial.removeAll(keepingCapacity: true)
            } else if partial.count < 512 {  // a progress line is short; anything longer is not one
                partial.append(byte)
            }
        }
        return latest
    }

    /// The first field when it is digits and commas followed by a percentage.
    static func bytes(_ line: [UInt8]) -> Int64? {
        let fields = String(decoding: line, as: UTF8.self).split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 2, fields[1].hasSuffix("%"),
              fields[0].allSatisfy({ $0 == "," || ($0.isASCII && $0.isNumber) }) else { return nil }
        return Int64(fields[0].filter { $0 != "," })
    }
}
