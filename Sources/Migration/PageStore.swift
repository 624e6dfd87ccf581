import Foundation
import GodwitCore
import Memory

/// The destination's copy of a container's pages, keyed by (ns-pid, vaddr); later rounds
/// overwrite earlier ones.
///
/// Layout: one "slot file" per process (`<directory>/<nsPID>.pages`) plus an in-memory
/// index vaddr -> slot. A page keeps its slot when overwritten, freed slots (dropped pages)
/// are reused, and a run of new pages gets consecutive slots so it is written (and later
/// read) with one syscall. Zero pages are index entries only. Why not sparse files
/// addressed by vaddr: user addresses reach 2^47 (the stack), beyond ext4's 16 TiB file
/// limit, and sparse writes scatter; slot files are dense and work on any filesystem.
/// The store lives in /dev/shm when it exists: the pages end up in RAM after the restore
/// anyway, and tmpfs avoids disk latency in the final phase. The index costs ~40 bytes
/// per page in memory (~10 MB per GiB of container memory).
public final class PageStore {
    public let directory: String
    public static let zeroSlot: Int32 = -1

    final class ProcessPages {
        let fd: Int32
        var index: [UInt64: Int32] = [:]
        var slots: Int32 = 0
        var free: [Int32] = []
        init(fd: Int32) { self.fd = fd }
        deinit { close(fd) }
    }

    private var processes: [pid_t: ProcessPages] = [:]
    private let pageSize = Int(systemPageSize)
    /// Pages held (data + zero) across processes, kept up to date for the bound below.
    private var heldPages = 0

    /// What a peer can make the store hold. Every process costs an open file and every page
    /// ~40 bytes of index, and one 32-byte zero record names up to 256 pages: without
    /// bounds a peer could exhaust the daemon's descriptors or memory at line rate.
    public struct Limits: Sendable, Equatable {
        /// Processes held at once (forgotten ones don't count).
        public var processes: Int
        /// Pages held at once: a container with more could not be restored on this host.
        public var pages: Int
        public init(processes: Int = 4096, pages: Int = Int(clamping: HostMemory.pages)) {
            self.processes = processes
            self.pages = pages
        }
    }
    public let limits: Limits

    public struct Counts: Sendable, Equatable {
        /// Pages held (data + zero).
        public var pages = 0
        public var zeroPages = 0
        public var processes = 0
        /// Bytes the slot files occupy (including freed slots awaiting reuse).
        public var fileBytes: UInt64 = 0
    }

    /// Makes (or empties) `directory`. nil: a fresh directory under /dev/shm (or /tmp).
    public init(directory: String? = nil, limits: Limits = Limits()) throws {
        self.limits = limits
        let base = FileManager.default.isWritableFile(atPath: "/dev/shm") ? "/dev/shm" : NSTemporaryDirectory()
        let dir = directory ?? base + "/godwit-pages-" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        if FileManager.default.fileExists(atPath: dir) { try FileManager.default.removeItem(atPath: dir) }
        // Root only: container memory, possibly in world-writable /dev/shm.
        try OwnerOnly.directory(dir)
        self.directory = dir
    }

    /// Deletes the files. The store is unusable afterwards.
    public func destroy() {
        processes = [:]
        heldPages = 0
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var counts: Counts {
        var c = Counts()
        for p in processes.values {
            c.pages += p.index.count
            c.zeroPages += p.index.values.reduce(0) { $0 + ($1 == Self.zeroSlot ? 1 : 0) }
            c.fileBytes += UInt64(p.slots) * UInt64(pageSize)
        }
        c.processes = processes.count
        return c
    }

    public var nsPIDs: [pid_t] { processes.keys.sorted() }

    /// Pages held for one process (data + zero).
    public func pageCount(nsPID: pid_t) -> Int { processes[nsPID]?.index.count ?? 0 }

    private func pages(_ nsPID: pid_t) throws -> ProcessPages {
        if let p = processes[nsPID] { return p }
        guard nsPID > 0 else { throw GodwitError("page store: no process has pid \(nsPID)") }
        guard processes.count < limits.processes else {
            throw GodwitError("page store: the source sent pages of more than \(limits.processes) processes",
                              hint: "a container with that many processes can't be moved; or the source is misbehaving")
        }
        let path = directory + "/\(nsPID).pages"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw GodwitError.errno("open \(path)", hint: "is the page store directory writable and not full?") }
        let p = ProcessPages(fd: fd)
        processes[nsPID] = p
        return p
    }

    /// Checks a run of pages before it touches the index: a count that fits the data, an
    /// address range that doesn't wrap, and room under `limits.pages` even if every page is
    /// new (a run re-sent to the same addresses near the limit is refused too: fine, since
    /// the limit is what this host could restore anyway).
    private func checkRun(nsPID: pid_t, vaddr: UInt64, count: Int) throws {
        guard count >= 0, PageArithmetic.end(of: vaddr, pages: UInt64(count), pageSize: systemPageSize) != nil else {
            throw GodwitError("page store: \(count) pages at 0x\(String(vaddr, radix: 16)) of process \(nsPID) run past the end of the address space")
        }
        guard count <= limits.pages - heldPages else {
            throw GodwitError("page store: more than \(limits.pages) pages (this host's memory and swap)",
                              hint: "the container does not fit this host; or the source is misbehaving")
        }
    }

    /// Stores `count` pages at `vaddr` from `data` (count * page size bytes).
    public func store(nsPID: pid_t, vaddr: UInt64, count: Int, data: UnsafeRawBufferPointer) throws {
        try checkRun(nsPID: nsPID, vaddr: vaddr, count: count)
        guard data.count == count * pageSize else {
            throw GodwitError("page store: \(count) pages with \(data.count) bytes of data")
        }
        let p = try pages(nsPID)
        var slots = [Int32](repeating: 0, count: count)
        for i in 0..<count {
            let address = vaddr + UInt64(i * pageSize)
            if let slot = p.index[address], slot != Self.zeroSlot {
                slots[i] = slot
            } else {
                let slot = p.free.popLast() ?? { defer { p.slots += 1 }; return p.slots }()
                if p.index.updateValue(slot, forKey: address) == nil { heldPages += 1 }
                slots[i] = slot
            }
        }
        // Write runs of consecutive slots with one pwrite each.
        var i = 0
        while i < count {
            var j = i + 1
            while j < count, slots[j] == slots[j - 1] + 1 { j += 1 }
            let bytes = (j - i) * pageSize
            var done = 0
            while done < bytes {
                let n = pwrite(p.fd, data.baseAddress! + i * pageSize + done, bytes - done,
                               off_t(Int(slots[i]) * pageSize + done))
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else {
                    let failure = GodwitError.errno("writing pages to \(directory)", hint: "is the page store's filesystem full?")
                    // The index named these slots before the write: it must not keep a slot
                    // that was never written. Read, it would end the file early ("failed:
                    // Success", found by the fault matrix on a full disk), or, once a later
                    // write grew the file past it, read as a hole: zeros served as memory.
                    // Forgotten, the pages are fetched from the source instead.
                    if let end = PageArithmetic.end(of: vaddr, pages: UInt64(count), pageSize: systemPageSize) {
                        drop(nsPID: nsPID, range: vaddr..<end)
                    }
                    throw failure
                }
                done += n
            }
            i = j
        }
    }

    /// Records `count` zero pages at `vaddr` (no data written; their slots are freed).
    public func storeZero(nsPID: pid_t, vaddr: UInt64, count: Int) throws {
        try checkRun(nsPID: nsPID, vaddr: vaddr, count: count)
        let p = try pages(nsPID)
        for i in 0..<count {
            let address = vaddr + UInt64(i * pageSize)
            if let slot = p.index.updateValue(Self.zeroSlot, forKey: address) {
                if slot != Self.zeroSlot { p.free.append(slot) }
            } else {
                heldPages += 1
            }
        }
    }

    /// Forgets pages in [range).
    public func drop(nsPID: pid_t, range: Range<UInt64>) {
        guard let p = processes[nsPID] else { return }
        // Walk whichever is smaller: the range's pages or the index.
        let pagesInRange = Int((range.upperBound - range.lowerBound) / systemPageSize)
        if pagesInRange <= p.index.count {
            // Not stride(): its step past the last page would trap at the top of the address space.
            var address = range.lowerBound
            while address < range.upperBound {
                if let slot = p.index.removeValue(forKey: address) {
                    heldPages -= 1
                    if slot != Self.zeroSlot { p.free.append(slot) }
                }
                let (next, wrapped) = address.addingReportingOverflow(systemPageSize)
                if wrapped { break }
                address = next
            }
        } else {
            for (address, slot) in p.index where range.contains(address) {
                p.index[address] = nil
                heldPages -= 1
                if slot != Self.zeroSlot { p.free.append(slot) }
            }
        }
    }

    /// Forgets a whole process.
    public func forget(nsPID: pid_t) {
        guard let p = processes.removeValue(forKey: nsPID) else { return }
        heldPages -= p.index.count
        try? FileManager.default.removeItem(atPath: directory + "/\(nsPID).pages")
    }

    public func contains(nsPID: pid_t, vaddr: UInt64) -> Bool { processes[nsPID]?.index[vaddr] != nil }

    /// Addresses held for a process, sorted (for tests and reports).
    public func addresses(nsPID: pid_t) -> [UInt64] { processes[nsPID]?.index.keys.sorted() ?? [] }

    /// Copies pages [vaddr, vaddr+count) into `buffer` where held; returns which were held
    /// (a page not held leaves its part of the buffer untouched).
    public func read(nsPID: pid_t, vaddr: UInt64, count: Int, into buffer: UnsafeMutableRawBufferPointer) throws -> [Bool] {
        guard count >= 0, count <= buffer.count / pageSize,
              PageArithmetic.end(of: vaddr, pages: UInt64(count), pageSize: systemPageSize) != nil else {
            throw GodwitError("page store: cannot read \(count) pages at 0x\(String(vaddr, radix: 16)) into \(buffer.count) bytes")
        }
        guard let p = processes[nsPID] else { return [Bool](repeating: false, count: count) }
        var held = [Bool](repeating: false, count: count)
        var slots = [Int32](repeating: Self.zeroSlot, count: count)
        for i in 0..<count {
            if let slot = p.index[vaddr + UInt64(i * pageSize)] {
                held[i] = true
                slots[i] = slot
                if slot == Self.zeroSlot {
                    memset(buffer.baseAddress! + i * pageSize, 0, pageSize)
                }
            }
        }
        var i = 0
        while i < count {
            guard held[i], slots[i] != Self.zeroSlot else { i += 1; continue }
            var j = i + 1
            while j < count, held[j], slots[j] == slots[j - 1] + 1 { j += 1 }
            let bytes = (j - i) * pageSize
            var done = 0
            while done < bytes {
                let n = pread(p.fd, buffer.baseAddress! + i * pageSize + done, bytes - done,
                              off_t(Int(slots[i]) * pageSize + done))
                if n < 0 && errno == EINTR { continue }
                guard n >= 0 else { throw GodwitError.errno("reading pages from \(directory)") }
                guard n > 0 else {
                    throw GodwitError("page store \(directory) ends before slot \(slots[i]) it holds a page in (process \(nsPID))")
                }
                done += n
            }
            i = j
        }
        return held
    }
}
