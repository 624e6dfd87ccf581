import Foundation
import GodwitCore
import Memory

/// One unit of a pre-copy round on the wire. Rounds are streams of records, so any
/// transport that moves bytes in order (a socketpair in tests, TCP between daemons) can
/// carry them without knowing what they mean.
///
/// Framing (little-endian), 24-byte header + payload + 8-byte trailer:
///
///     0  u8  kind            PageRecord.Kind
///     1  u8  version         1
///     2  u16 reserved        0
///     4  i32 nsPID           process, as numbered inside the container's pid namespace
///     8  u64 vaddr           first page (page aligned); roundEnd: number of records
///    16  u32 pageCount       pages covered; roundEnd: data pages in the round (mod 2^32)
///    20  u32 round           round number (1-based; the final scan uses its own number)
///    24  ...                 payload: pageCount*4096 bytes for .pages, nothing otherwise
///     .  u64 checksum        XXH3-64 of header + payload
///
/// Kind 6, zstd pages (only to a destination that announced "zstd", see PeerCapabilities) carries
/// the same pages as a zstd frame: payload = u32 frame length + frame (PageRecord+Zstd.swift).
/// The reader hands it on as the `.pages` record it decompresses to.
///
/// Per-record checksums (not per round) let the receiver reject a corrupt record at once
/// instead of after buffering a whole round; the roundEnd record's counts catch a lost
/// or duplicated record. Zero pages travel as `.zero` records: 32 bytes for any run.
public struct PageRecord: Sendable, Equatable {
    public enum Kind: UInt8, Sendable {
        case roundStart = 1
        /// Page contents.
        case pages = 2
        /// Pages that are all zero (markers, no payload).
        case zero = 3
        /// Pages the destination must forget (no longer resident, or dirtied after they
        /// were sent and not resent: the final scan's dirty set).
        case drop = 4
        /// Forget every page of this ns-pid (process exited, or a new process reuses it).
        case forgetProcess = 5
        case roundEnd = 15
    }

    /// The kind byte of a compressed pages record. Not a `Kind`: nobody past the reader ever
    /// sees one (it hands on the `.pages` record the frame holds).
    public static let zstdPagesKind: UInt8 = 6

    public static let headerSize = 24
    public static let trailerSize = 8
    public static let version: UInt8 = 1
    /// Records carry at most this many pages (256 pages = 1 MiB), bounding receive buffers.
    public static let maxPages = 256

    public var kind: Kind
    public var nsPID: pid_t
    public var vaddr: UInt64
    public var pageCount: UInt32
    public var round: UInt32
    public var payload: [UInt8]

    public init(kind: Kind, nsPID: pid_t = 0, vaddr: UInt64 = 0, pageCount: UInt32 = 0, round: UInt32, payload: [UInt8] = []) {
        self.kind = kind
        self.nsPID = nsPID
        self.vaddr = vaddr
        self.pageCount = pageCount
        self.round = round
        self.payload = payload
    }

    /// The pages the record covers. A record read from the wire is checked not to wrap
    /// (`PageRecordReader`); one built by hand that would is clamped at the last address.
    public var range: Range<UInt64> {
        vaddr..<(PageArithmetic.end(of: vaddr, pages: UInt64(pageCount), pageSize: systemPageSize) ?? UInt64.max)
    }

    static func header(kind: Kind, nsPID: pid_t, vaddr: UInt64, pageCount: UInt32, round: UInt32) -> [UInt8] {
        header(rawKind: kind.rawValue, nsPID: nsPID, vaddr: vaddr, pageCount: pageCount, round: round)
    }

    static func header(rawKind: UInt8, nsPID: pid_t, vaddr: UInt64, pageCount: UInt32, round: UInt32) -> [UInt8] {
        var h = [UInt8](repeating: 0, count: headerSize)
        h.withUnsafeMutableBytes { p in
            p.storeBytes(of: rawKind, toByteOffset: 0, as: UInt8.self)
            p.storeBytes(of: version, toByteOffset: 1, as: UInt8.self)
            p.storeBytes(of: nsPID.littleEndian, toByteOffset: 4, as: Int32.self)
            p.storeBytes(of: vaddr.littleEndian, toByteOffset: 8, as: UInt64.self)
            p.storeBytes(of: pageCount.littleEndian, toByteOffset: 16, as: UInt32.self)
            p.storeBytes(of: round.littleEndian, toByteOffset: 20, as: UInt32.self)
        }
        return h
    }

    /// The record's bytes (header, payload, checksum), for tests and small records.
    public func encoded() -> [UInt8] {
        let h = Self.header(kind: kind, nsPID: nsPID, vaddr: vaddr, pageCount: pageCount, round: round)
        let sum = h.withUnsafeBytes { hb in payload.withUnsafeBytes { pb in PageHash.xxh3([hb, pb]) } }
        var out = h + payload
        withUnsafeBytes(of: sum.littleEndian) { out += $0 }
        return out
    }
}

/// Where a round's bytes go: a socket, a pipe, a file. Must write everything or throw.
public protocol ByteSink: AnyObject {
    func write(_ bytes: UnsafeRawBufferPointer) throws
}

/// Where a round's bytes come from. Must fill the buffer completely, or throw (EOF
/// inside a record is an error; EOF between records is reported by returning false
/// from `readFull` when nothing at all was read).
public protocol ByteSource: AnyObject {
    func readFull(_ buffer: UnsafeMutableRawBufferPointer) throws -> Bool
}

/// A file descriptor as ByteSink/ByteSource (socketpair, pipe, TCP socket).
public final class FileDescriptorStream: ByteSink, ByteSource, Sendable {
    public let fd: Int32
    private let owns: Bool
    /// What the other end is, for errors ("write to <name>").
    private let name: String

    public init(fd: Int32, owns: Bool = true, name: String = "page stream") {
        self.fd = fd
        self.owns = owns
        self.name = name
    }

    deinit { if owns { Glibc.close(fd) } }

    public func write(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            // send(MSG_NOSIGNAL): a peer that went away is an error here, not a SIGPIPE
            // that kills the daemon; plain write for pipes and files.
            var n = Glibc.send(fd, bytes.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == ENOTSOCK { n = Glibc.write(fd, bytes.baseAddress! + done, bytes.count - done) }
            if n < 0 {
                if errno == EINTR { continue }
                throw GodwitError.errno("write to \(name)")
            }
            done += n
        }
    }

    public func readFull(_ buffer: UnsafeMutableRawBufferPointer) throws -> Bool {
        var done = 0
        while done < buffer.count {
            let n = Glibc.read(fd, buffer.baseAddress! + done, buffer.count - done)
            if n < 0 {
                if errno == EINTR { continue }
                throw GodwitError.errno("read from \(name)")
            }
            if n == 0 {
                if done == 0 { return false }
                throw GodwitError("\(name) ended inside a record (\(done) of \(buffer.count) bytes)")
            }
            done += n
        }
        return true
    }

    /// Two connected ends (AF_UNIX stream), for in-process transfers and tests.
    public static func pair() throws -> (FileDescriptorStream, FileDescriptorStream) {
        var fds: [Int32] = [0, 0]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &fds) == 0 else {
            throw GodwitError.errno("socketpair")
        }
        return (FileDescriptorStream(fd: fds[0]), FileDescriptorStream(fd: fds[1]))
    }
}

/// Writes records; page payloads are passed as raw buffers so nothing is copied twice.
public final class PageRecordWriter {
    public let sink: ByteSink
    public private(set) var bytesWritten: UInt64 = 0
    /// nil: pages always go raw (the destination can't read compressed records, or they are off).
    public let compression: PageCompressionPolicy?
    var compressor: Zstd.Compressor?
    var frameBuffer: UnsafeMutableRawBufferPointer?

    public init(sink: ByteSink, compression: PageCompressionPolicy? = nil) {
        self.sink = sink
        self.compression = compression?.mode == .off ? nil : compression
    }

    deinit { frameBuffer?.deallocate() }

    public func write(_ kind: PageRecord.Kind, nsPID: pid_t = 0, vaddr: UInt64 = 0, pageCount: UInt32 = 0,
                      round: UInt32, payload: UnsafeRawBufferPointer? = nil) throws {
        guard kind != .pages || payload?.count == Int(pageCount) * Int(systemPageSize) else {
            throw GodwitError("page stream: a pages record of \(pageCount) pages with \(payload?.count ?? 0) bytes of payload")
        }
        if kind == .pages, let compression, let payload,
           try writeCompressed(nsPID: nsPID, vaddr: vaddr, pageCount: pageCount, round: round, pages: payload, policy: compression) {
            return
        }
        let t0 = DispatchTime.now().uptimeNanoseconds
        try writeFramed(kind.rawValue, nsPID: nsPID, vaddr: vaddr, pageCount: pageCount, round: round, payload: payload)
        if kind == .pages, let payload {
            compression?.noteRawWrite(bytes: payload.count, nanos: DispatchTime.now().uptimeNanoseconds - t0)
        }
    }

    /// Header, payload parts, checksum over all of them.
    func writeFramed(_ rawKind: UInt8, nsPID: pid_t, vaddr: UInt64, pageCount: UInt32, round: UInt32,
                     payload: UnsafeRawBufferPointer?, prefix: UnsafeRawBufferPointer? = nil) throws {
        let h = PageRecord.header(rawKind: rawKind, nsPID: nsPID, vaddr: vaddr, pageCount: pageCount, round: round)
        let empty = UnsafeRawBufferPointer(start: nil, count: 0)
        try h.withUnsafeBytes { hb in
            let body = payload ?? empty, head = prefix ?? empty
            var sum = PageHash.xxh3([hb, head, body]).littleEndian
            try sink.write(hb)
            if head.count > 0 { try sink.write(head) }
            if body.count > 0 { try sink.write(body) }
            try withUnsafeBytes(of: &sum) { try sink.write($0) }
            bytesWritten += UInt64(hb.count + head.count + body.count + 8)
        }
    }
}

/// Reads and checks records.
public final class PageRecordReader {
    public let source: ByteSource
    public internal(set) var bytesRead: UInt64 = 0
    /// Compressed records read (each handed on as the `.pages` record it holds).
    public internal(set) var compressedRecords = 0
    var decompressor: Zstd.Decompressor?

    public init(source: ByteSource) { self.source = source }

    /// The next record, or nil at a clean end of stream. Throws on a bad checksum, an
    /// unknown kind or version, or a payload that doesn't match its page count.
    public func next() throws -> PageRecord? {
        var h = [UInt8](repeating: 0, count: PageRecord.headerSize)
        guard try h.withUnsafeMutableBytes({ try source.readFull($0) }) else { return nil }
        let (rawKind, version, nsPID, vaddr, count, round) = h.withUnsafeBytes { p in
            (p.load(fromByteOffset: 0, as: UInt8.self), p.load(fromByteOffset: 1, as: UInt8.self),
             Int32(littleEndian: p.loadUnaligned(fromByteOffset: 4, as: Int32.self)),
             UInt64(littleEndian: p.loadUnaligned(fromByteOffset: 8, as: UInt64.self)),
             UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 16, as: UInt32.self)),
             UInt32(littleEndian: p.loadUnaligned(fromByteOffset: 20, as: UInt32.self)))
        }
        if version == PageRecord.version, rawKind == PageRecord.zstdPagesKind {
            try Self.check(kind: .pages, nsPID: nsPID, vaddr: vaddr, count: count)
            return try readCompressed(header: h, nsPID: nsPID, vaddr: vaddr, count: count, round: round)
        }
        guard version == PageRecord.version, let kind = PageRecord.Kind(rawValue: rawKind) else {
            throw GodwitError("page stream: unknown record (kind \(rawKind), version \(version))",
                              hint: "both hosts must run the same Godwit version")
        }
        try Self.check(kind: kind, nsPID: nsPID, vaddr: vaddr, count: count)
        var payload = [UInt8](repeating: 0, count: kind == .pages ? Int(count) * Int(systemPageSize) : 0)
        if !payload.isEmpty {
            guard try payload.withUnsafeMutableBytes({ try source.readFull($0) }) else {
                throw GodwitError("page stream ended before a record's payload")
            }
        }
        var sum: UInt64 = 0
        guard try withUnsafeMutableBytes(of: &sum, { try source.readFull($0) }) else {
            throw GodwitError("page stream ended before a record's checksum")
        }
        let expected = h.withUnsafeBytes { hb in payload.withUnsafeBytes { pb in PageHash.xxh3([hb, pb]) } }
        guard UInt64(littleEndian: sum) == expected else {
            throw GodwitError("page stream: checksum mismatch in a \(kind) record for process \(nsPID) at 0x\(String(vaddr, radix: 16))",
                              hint: "the transport corrupted data; the migration must be retried")
        }
        bytesRead += UInt64(h.count + payload.count + 8)
        return PageRecord(kind: kind, nsPID: nsPID, vaddr: vaddr, pageCount: count, round: round, payload: payload)
    }

    /// The bounds the page store relies on, checked before any payload is read: a record
    /// names a real process, page-aligned pages that don't run past the end of the address
    /// space, and (pages and zero pages, which the store indexes one by one) at most
    /// `maxPages` of them, which is all a sender ever puts in one. Drops may be long: the
    /// store walks the smaller of the range and what it holds.
    static func check(kind: PageRecord.Kind, nsPID: Int32, vaddr: UInt64, count: UInt32) throws {
        switch kind {
        case .roundStart, .roundEnd:
            return
        case .forgetProcess:
            guard nsPID > 0 else { throw GodwitError("page stream: a \(kind) record for process \(nsPID)") }
            return
        case .pages, .zero, .drop:
            break
        }
        guard nsPID > 0 else { throw GodwitError("page stream: a \(kind) record for process \(nsPID)") }
        if kind != .drop, count == 0 || count > UInt32(PageRecord.maxPages) {
            throw GodwitError("page stream: a \(kind) record claims \(count) pages (1 to \(PageRecord.maxPages) allowed)")
        }
        guard PageArithmetic.isAligned(vaddr, pageSize: systemPageSize) else {
            throw GodwitError("page stream: a \(kind) record at 0x\(String(vaddr, radix: 16)), not page aligned")
        }
        guard PageArithmetic.end(of: vaddr, pages: UInt64(count), pageSize: systemPageSize) != nil else {
            throw GodwitError("page stream: a \(kind) record of \(count) pages at 0x\(String(vaddr, radix: 16)) runs past the end of the address space")
        }
    }
}
