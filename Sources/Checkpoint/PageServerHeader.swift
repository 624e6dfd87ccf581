import Foundation
import GodwitCore

/// One header of CRIU's page-server protocol, as CRIU 4.2 puts it on the wire: the
/// `struct page_server_iov` of criu/page-xfer.c in native (little-endian) layout, 32 bytes:
///
///     0  u32 cmd       low 16 bits the command, high 16 bits its flags
///     4  4 bytes       alignment padding; CRIU never zeroes it, and a GET's answer is the
///                      request struct sent back, so whatever was there comes back
///     8  u64 nr_pages
///    16  u64 vaddr
///    24  u64 dst_id    for GET: the task's pid in the container's pid namespace
///
/// CRIU 4.1 used 24 bytes (u32 nr_pages, no padding) and nothing negotiates the layout:
/// both hosts must run 4.2 (see CRIUVersion.pageServerProtocol).
///
/// Every header Godwit reads or writes goes through this type, so its bounds checks are
/// the only ones needed: a decoded header has at most `maxPages` pages, and its page range
/// `vaddr ..< vaddr + pages * 4096` does not wrap around. Wire values are never converted
/// with a trapping initializer: a corrupt or hostile peer gets an error, not a crash.
public struct PageServerHeader: Sendable, Equatable {
    public static let size = 32
    /// nr_pages counts pages of CRIU's PAGE_SIZE, the host's page size (4096 on x86_64).
    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// The most pages one header may name. `criu lazy-pages` asks for up to 1024; the
    /// limit keeps a corrupt count from sizing a multi-gigabyte buffer.
    public static let maxPages = 1 << 20

    /// Command numbers (the low 16 bits of cmd), from criu/page-xfer.c.
    public enum Command {
        /// PS_IOV_ADD_F: pages follow; its flags say which kind (see `Flag`).
        public static let addF: UInt16 = 6
        /// PS_IOV_GET: a lazy client asks for pages.
        public static let get: UInt16 = 7
        /// PS_IOV_CLOSE: the end of the session; the server answers an int32 status and,
        /// in a lazy dump, completes the dump (the source's tasks are killed).
        public static let close: UInt16 = 0x1023
        /// PS_IOV_FORCE_CLOSE: CLOSE from a client whose socket was handed to it
        /// (`--ps-socket`); answered and treated like CLOSE (page-xfer.c page_server_serve).
        public static let forceClose: UInt16 = 0x1024
        /// Not a CRIU command: CRIU fails the session on any unknown one, which makes a
        /// lazy dump fail and resume the source, whatever the connection does next.
        public static let abort: UInt16 = 0xDEAD
    }

    /// Flags (the high 16 bits of cmd).
    public enum Flag {
        /// PE_PRESENT: the pages are in the stream (criu/include/pagemap.h).
        public static let present: UInt16 = 4
    }

    /// The raw cmd word; see `command` and `flags`.
    public let cmd: UInt32
    /// The padding bytes as they came, kept so that a reply can echo them.
    public let padding: UInt32
    public let pages: Int
    public let vaddr: UInt64
    public let dstID: UInt64

    /// A header with the given fields, checked like a decoded one.
    public init(command: UInt16, flags: UInt16 = 0, pages: Int = 0, vaddr: UInt64 = 0, dstID: UInt64 = 0,
                padding: UInt32 = 0) throws {
        guard pages >= 0, pages <= Self.maxPages else { throw Self.badPageCount("\(pages)") }
        try Self.checkRange(vaddr: vaddr, pages: pages)
        cmd = UInt32(flags) << 16 | UInt32(command)
        self.padding = padding
        self.pages = pages
        self.vaddr = vaddr
        self.dstID = dstID
    }

    /// Decodes the first `size` bytes of `bytes`. Throws if there are fewer, if nr_pages
    /// exceeds `maxPages`, or if the page range would run past the end of the address space.
    public init(bytes: UnsafeRawBufferPointer) throws {
        guard bytes.count >= Self.size else {
            throw GodwitError("a CRIU page-server header is \(Self.size) bytes, got \(bytes.count)",
                              hint: "both hosts must run CRIU 4.2 or newer (4.1 used 24-byte headers)")
        }
        let cmd = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 0, as: UInt32.self))
        let padding = bytes.loadUnaligned(fromByteOffset: 4, as: UInt32.self)
        let nrPages = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 8, as: UInt64.self))
        let vaddr = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 16, as: UInt64.self))
        let dstID = UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: 24, as: UInt64.self))
        guard let pages = Int(exactly: nrPages), pages <= Self.maxPages else { throw Self.badPageCount("\(nrPages)") }
        try Self.checkRange(vaddr: vaddr, pages: pages)
        self.cmd = cmd
        self.padding = padding
        self.pages = pages
        self.vaddr = vaddr
        self.dstID = dstID
    }

    public init(bytes: [UInt8]) throws {
        self = try bytes.withUnsafeBytes { try PageServerHeader(bytes: $0) }
    }

    private static func badPageCount(_ count: String) -> GodwitError {
        GodwitError("a CRIU page-server header names \(count) pages (0 to \(maxPages) allowed)",
                    hint: "the peer does not speak CRIU 4.2's page-server protocol, or the stream is corrupt")
    }

    private static func checkRange(vaddr: UInt64, pages: Int) throws {
        // pages <= maxPages here, so the product fits; only the sum can wrap.
        let (_, wrapped) = vaddr.addingReportingOverflow(UInt64(pages) * UInt64(pageSize))
        if wrapped {
            throw GodwitError("a CRIU page-server header names \(pages) pages at 0x\(String(vaddr, radix: 16)), past the end of the address space",
                              hint: "the stream is corrupt")
        }
    }

    // MARK: fields

    public var command: UInt16 { UInt16(truncatingIfNeeded: cmd) }
    public var flags: UInt16 { UInt16(truncatingIfNeeded: cmd >> 16) }
    /// dst_id as a GET's pid; nil when it can't be one.
    public var nsPID: Int32? { Int32(exactly: dstID) }
    /// Bytes of page data that follow a header carrying pages (fits: pages <= maxPages).
    public var byteCount: Int { pages * Self.pageSize }
    /// The address after the last page (cannot wrap: checked when the header was made).
    public var endAddress: UInt64 { vaddr + UInt64(byteCount) }

    public var isGet: Bool { command == Command.get }
    /// CRIU ends its session loop only on the exact cmd word (criu/page-xfer.c compares
    /// `pi.cmd`, not the decoded command), so flags make it something else.
    public var isClose: Bool { cmd == UInt32(Command.close) || cmd == UInt32(Command.forceClose) }
    /// A GET's answer: ADD_F with PE_PRESENT, pages follow.
    public var isPresentPages: Bool { command == Command.addF && flags & Flag.present != 0 }

    // MARK: building

    /// A GET for `pages` pages at `vaddr` of the task `nsPID`.
    public static func get(nsPID: Int32, vaddr: UInt64, pages: Int, padding: UInt32 = 0) throws -> PageServerHeader {
        try PageServerHeader(command: Command.get, pages: pages, vaddr: vaddr,
                             dstID: UInt64(UInt32(bitPattern: nsPID)), padding: padding)
    }

    /// CLOSE: every other field zero, as CRIU's own clients send it.
    public static let closeRequest = PageServerHeader(checkedCommand: Command.close)
    /// The unknown command that fails a CRIU session on purpose (see `Command.abort`).
    public static let abortRequest = PageServerHeader(checkedCommand: Command.abort)

    private init(checkedCommand command: UInt16) {
        cmd = UInt32(command)
        padding = 0
        pages = 0
        vaddr = 0
        dstID = 0
    }

    /// The answer to this GET carrying `pages` pages (fewer than asked is allowed: the
    /// client asks again for the rest): this header, padding included, with cmd ADD_F and
    /// PE_PRESENT, which is what CRIU's page server sends.
    public func reply(pages: Int) throws -> PageServerHeader {
        try PageServerHeader(command: Command.addF, flags: Flag.present, pages: pages, vaddr: vaddr,
                             dstID: dstID, padding: padding)
    }

    /// This header as a GET for `pages` pages at `vaddr` (default: its own), padding and
    /// dst_id kept: how a proxy asks upstream on behalf of its client.
    public func asGet(pages: Int, vaddr: UInt64? = nil) throws -> PageServerHeader {
        try PageServerHeader(command: Command.get, pages: pages, vaddr: vaddr ?? self.vaddr, dstID: dstID,
                             padding: padding)
    }

    // MARK: encoding

    public func encode() -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: Self.size)
        bytes.withUnsafeMutableBytes { store(into: $0) }
        return bytes
    }

    /// Writes the 32 bytes at the start of `buffer`; throws if it is shorter.
    public func write(into buffer: UnsafeMutableRawBufferPointer) throws {
        guard buffer.count >= Self.size else {
            throw GodwitError("no room for a CRIU page-server header: \(buffer.count) of \(Self.size) bytes")
        }
        store(into: buffer)
    }

    private func store(into buffer: UnsafeMutableRawBufferPointer) {
        buffer.storeBytes(of: cmd.littleEndian, toByteOffset: 0, as: UInt32.self)
        buffer.storeBytes(of: padding, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: UInt64(pages).littleEndian, toByteOffset: 8, as: UInt64.self)
        buffer.storeBytes(of: vaddr.littleEndian, toByteOffset: 16, as: UInt64.self)
        buffer.storeBytes(of: dstID.littleEndian, toByteOffset: 24, as: UInt64.self)
    }
}

extension PageServerHeader: CustomStringConvertible {
    public var description: String {
        "cmd 0x\(String(cmd, radix: 16)), \(pages) pages at 0x\(String(vaddr, radix: 16)) for \(dstID)"
    }
}
