import Foundation
import GodwitCore
import Memory

/// Sends the files of a CRIU images directory (flat: CRIU writes no subdirectories) over a
/// byte stream, and receives them on the other side. Frames: u32 name length, name, u64
/// size, contents; a zero name length ends the transfer. Names are checked on receipt, so
/// a peer can't write outside the target directory.
public enum ImageTransfer {
    /// Returns the bytes of file contents sent.
    @discardableResult
    public static func send(directory: String, to fd: Int32, skipping: (String) -> Bool = { _ in false }) throws -> UInt64 {
        let fm = FileManager.default
        var total: UInt64 = 0
        for name in try fm.contentsOfDirectory(atPath: directory).sorted() where !skipping(name) {
            var isDirectory: ObjCBool = false
            let path = directory + "/" + name
            guard fm.fileExists(atPath: path, isDirectory: &isDirectory), !isDirectory.boolValue else { continue }
            guard let data = fm.contents(atPath: path) else {
                throw GodwitError("cannot read image file \(path)")
            }
            var frame = Data()
            append(UInt32(name.utf8.count), to: &frame)
            frame.append(contentsOf: Array(name.utf8))
            append(UInt64(data.count), to: &frame)
            try write(fd, frame)
            try write(fd, data)
            total += UInt64(data.count)
        }
        try write(fd, Data(count: 4))
        return total
    }

    /// Ends the sender's direction and waits until the receiver closes its end (it does
    /// once it has every file). Closing at once instead can lose the tail: the peer-stream
    /// bridge takes a local socket closed while the peer's direction is still open for an
    /// abort, and drops what TLS had not sent yet ("the stream ended early" on the other side).
    public static func finishSending(_ fd: Int32, timeout: TimeInterval = 120) throws {
        shutdown(fd, Int32(SHUT_WR))
        let deadline = Date().addingTimeInterval(timeout)
        var scratch = [UInt8](repeating: 0, count: 4096)
        while true {
            let left = deadline.timeIntervalSinceNow
            guard left > 0 else { throw GodwitError("image transfer: the destination did not confirm the images within \(Int(timeout)) s") }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = Glibc.poll(&p, 1, Int32(min(left, 1) * 1000))
            if ready < 0 && errno == EINTR { continue }
            if ready <= 0 { continue }
            let n = Glibc.read(fd, &scratch, scratch.count)
            if n == 0 { return }
            if n < 0 && errno == EINTR { continue }
            // A reset after the receiver had everything still ends the stream; the receiver's
            // own result (the restore) says whether the images arrived whole.
            if n < 0 { return }
        }
    }

    /// What a receiver accepts. CRIU writes a handful of files per process (the page
    /// store caps processes at 4096) and its largest is one process's pages image.
    public struct Limits: Sendable, Equatable {
        public var files: Int
        public var fileBytes: UInt64
        public var totalBytes: UInt64
        public init(files: Int = 65_536, fileBytes: UInt64 = 64 << 30, totalBytes: UInt64? = nil) {
            self.files = files
            self.fileBytes = fileBytes
            // Images hold the container's memory (tmpfs included), which must fit this
            // host's memory and swap, plus some metadata.
            let memory = HostMemory.pages * systemPageSize  // pages <= UInt64.max / page size
            self.totalBytes = totalBytes ?? (memory > UInt64.max - (1 << 30) ? UInt64.max : memory + (1 << 30))
        }
    }

    /// Receives into `directory` (created); returns the bytes of file contents received.
    /// Everything about the stream is the peer's word: names are checked to stay in the
    /// directory, sizes and counts against `limits`, before anything is written. Root only:
    /// the images hold the container's state, its memory among it.
    @discardableResult
    public static func receive(from fd: Int32, into directory: String, limits: Limits = Limits()) throws -> UInt64 {
        try OwnerOnly.directory(directory)
        var total: UInt64 = 0
        var names = Set<String>()
        while true {
            let nameLength = try readInteger(fd, as: UInt32.self)
            if nameLength == 0 { return total }
            let name = try checkedName(try read(fd, count: try checkedNameLength(nameLength)))
            guard names.insert(name).inserted else { throw GodwitError("image transfer: file \(name) sent twice") }
            guard names.count <= limits.files else {
                throw GodwitError("image transfer: more than \(limits.files) files", hint: "the source is misbehaving")
            }
            let size = try readInteger(fd, as: UInt64.self)
            guard size <= limits.fileBytes else {
                throw GodwitError("image transfer: file \(name) claims \(size) bytes (at most \(limits.fileBytes))")
            }
            guard size <= limits.totalBytes - total else {
                throw GodwitError("image transfer: more than \(limits.totalBytes) bytes in all (this host's memory and swap)",
                                  hint: "the container does not fit this host; or the source is misbehaving")
            }
            let path = directory + "/" + name
            let file = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, OwnerOnly.fileMode)
            guard file >= 0 else { throw GodwitError.errno("create \(path)") }
            let handle = FileHandle(fileDescriptor: file, closeOnDealloc: true)
            defer { try? handle.close() }
            var left = Int(size)  // <= fileBytes, far below Int.max
            while left > 0 {
                let chunk = try read(fd, count: min(left, 1 << 20))
                try handle.write(contentsOf: chunk)
                left -= chunk.count
            }
            total += size
        }
    }

    static func checkedNameLength(_ length: UInt32) throws -> Int {
        guard length <= 255 else { throw GodwitError("image transfer: file name of \(length) bytes (at most 255)") }
        return Int(length)
    }

    /// One plain file name inside the images directory: valid UTF-8, no path separator, no
    /// NUL (the kernel would cut the path there), not "." or "..".
    static func checkedName(_ bytes: Data) throws -> String {
        guard let name = String(validating: bytes, as: UTF8.self) else {
            throw GodwitError("image transfer: a file name that is not UTF-8")
        }
        guard !name.isEmpty, !name.contains("/"), !name.contains("\0"), name != ".", name != ".." else {
            throw GodwitError("image transfer: refused file name '\(name.debugDescription.dropFirst().dropLast())'")
        }
        return name
    }

    static func append<T: FixedWidthInteger>(_ value: T, to data: inout Data) {
        withUnsafeBytes(of: value.littleEndian) { data.append(contentsOf: $0) }
    }

    static func readInteger<T: FixedWidthInteger>(_ fd: Int32, as: T.Type) throws -> T {
        let bytes = try read(fd, count: MemoryLayout<T>.size)
        return bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(as: T.self)) }
    }

    static func write(_ fd: Int32, _ data: Data) throws {
        try data.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + done, raw.count - done)
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { throw GodwitError.errno("sending images") }
                done += n
            }
        }
    }

    static func read(_ fd: Int32, count: Int) throws -> Data {
        var data = Data(count: count)
        try data.withUnsafeMutableBytes { raw in
            var done = 0
            while done < count {
                let n = Glibc.read(fd, raw.baseAddress! + done, count - done)
                if n < 0 && errno == EINTR { continue }
                if n == 0 { throw GodwitError("image transfer: the stream ended early") }
                guard n > 0 else { throw GodwitError.errno("receiving images") }
                done += n
            }
        }
        return data
    }
}
