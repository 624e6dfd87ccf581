import Foundation
import GodwitCore

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

    /// Receives into `directory` (created); returns the bytes of file contents received.
    /// Root only: the images hold the container's state, its memory among it.
    @discardableResult
    public static func receive(from fd: Int32, into directory: String) throws -> UInt64 {
        try OwnerOnly.directory(directory)
        var total: UInt64 = 0
        while true {
            let nameLength = Int(try readInteger(fd, as: UInt32.self))
            if nameLength == 0 { return total }
            guard nameLength <= 255 else { throw GodwitError("image transfer: file name of \(nameLength) bytes") }
            let name = String(decoding: try read(fd, count: nameLength), as: UTF8.self)
            guard !name.contains("/"), name != ".", name != ".." else {
                throw GodwitError("image transfer: refused file name '\(name)'")
            }
            let size = Int(try readInteger(fd, as: UInt64.self))
            guard size < 64 << 30 else { throw GodwitError("image transfer: file \(name) claims \(size) bytes") }
            let path = directory + "/" + name
            let file = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, OwnerOnly.fileMode)
            guard file >= 0 else { throw GodwitError.errno("create \(path)") }
            let handle = FileHandle(fileDescriptor: file, closeOnDealloc: true)
            defer { try? handle.close() }
            var left = size
            while left > 0 {
                let chunk = try read(fd, count: min(left, 1 << 20))
                try handle.write(contentsOf: chunk)
                left -= chunk.count
            }
            total += UInt64(size)
        }
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
