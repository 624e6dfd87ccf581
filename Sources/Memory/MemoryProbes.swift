import CGodwit
import Foundation
import GodwitCore

/// Measures what this host's kernel really does for memory tracking, each by doing it on
/// a throwaway child process (never by reading kernel config). Every probe is quick
/// (milliseconds), kills and reaps its child, and explains itself in one line.
public enum MemoryProbes {
    /// Soft-dirty: after `clear_refs 4`, does a page the child writes get pagemap bit 55?
    public static func softDirty() -> ProbeResult {
        probe { target in
            let clear = "/proc/\(target.pid)/clear_refs"
            guard let handle = FileHandle(forWritingAtPath: clear) else {
                return .no("cannot open \(clear): \(errnoName(errno))")
            }
            defer { try? handle.close() }
            do { try handle.write(contentsOf: Data("4".utf8)) } catch {
                return .no("writing 4 to clear_refs was refused: kernel built without CONFIG_MEM_SOFT_DIRTY")
            }
            try target.write(page: 1)
            let bits = try pagemapEntries(pid: target.pid, addresses: [target.address(ofPage: 0), target.address(ofPage: 1)])
            let dirty = bits.map { $0 & (1 << 55) != 0 }
            switch (dirty[0], dirty[1]) {
            case (false, true):
                return .yes("pagemap bit 55 set on the written page, clear on an untouched one (clear_refs 4 works)")
            case (_, false):
                return .no("pagemap bit 55 never set after a write: kernel built without CONFIG_MEM_SOFT_DIRTY")
            case (true, true):
                return .no("pagemap bit 55 stays set after clear_refs 4: soft-dirty can't tell writes apart here")
            }
        }
    }

    /// userfaultfd(2) + UFFDIO_API in this process; lists the features the kernel offers.
    public static func userfaultfd() -> ProbeResult {
        var fd = cgw_userfaultfd(O_CLOEXEC | O_NONBLOCK | Int32(UFFD_USER_MODE_ONLY))
        var via = "userfaultfd(2)"
        if fd < 0 {
            let syscallError = -fd
            fd = cgw_userfaultfd_dev(O_CLOEXEC | O_NONBLOCK | Int32(UFFD_USER_MODE_ONLY))
            via = "/dev/userfaultfd"
            if fd < 0 {
                return .no("userfaultfd(2) failed with \(errnoName(syscallError)) and /dev/userfaultfd with \(errnoName(-fd))"
                    + (syscallError == ENOSYS ? ": kernel without CONFIG_USERFAULTFD" : ": blocked (seccomp or vm.unprivileged_userfaultfd)"))
            }
        }
        defer { close(fd) }
        var features: UInt64 = 0, ioctls: UInt64 = 0
        let rc = cgw_uffd_api(fd, 0, &features, &ioctls)
        guard rc == 0 else { return .no("UFFDIO_API failed: \(errnoName(-rc))") }
        let f = UffdFeatures(rawValue: features)
        func yn(_ feature: UffdFeatures) -> String { f.contains(feature) ? "yes" : "no" }
        return .yes("UFFDIO_API via \(via): features 0x\(String(features, radix: 16)); WP_ASYNC \(yn(.wpAsync)), "
            + "WP_UNPOPULATED \(yn(.wpUnpopulated)), WP_HUGETLBFS_SHMEM \(yn(.wpHugetlbfsShmem)), MOVE \(yn(.move))")
    }

    /// PAGEMAP_SCAN on ANOTHER process's pagemap, opened read-only.
    public static func pagemapScan() -> ProbeResult {
        probe { target in
            let scanner = try PagemapScanner(pid: target.pid)
            let regions: [PageRegion]
            do {
                regions = try scanner.scan(target.range, .resident)
            } catch let error as GodwitError where error.errnoCode == ENOTTY {
                return .no("PAGEMAP_SCAN ioctl unknown (ENOTTY): kernel older than 6.7")
            }
            let present = regions.filter { $0.categories.contains(.present) }.pageCount
            guard present == target.pages else {
                return .no("PAGEMAP_SCAN answered but saw \(present) of the child's \(target.pages) resident pages")
            }
            return .yes("PAGEMAP_SCAN on a child's read-only pagemap: all \(target.pages) touched pages reported present")
        }
    }

    /// ptrace seize + an injected getpid() in a child returns the child's pid.
    public static func ptraceInjection() -> ProbeResult {
        probe { target in
            let tid = target.pid
            var session: PtraceSession?
            let answer = try PtraceSession.with(tid: tid) { s in
                session = s
                return try s.syscall(Int(CGW_NR_getpid))
            }
            try target.ping()  // still alive and still serving its loop
            let stopped = formatMillis(session?.stoppedNanos ?? 0)
            guard answer == Int(tid) else {
                return .no("injected getpid() in child \(tid) returned \(answer)")
            }
            return .yes("injected getpid() into child \(tid) returned \(answer); child stopped \(stopped), then ran on")
        }
    }

    /// pidfd_getfd: copy the child's end of a pipe and check it is the same pipe.
    public static func pidfdGetfd() -> ProbeResult {
        probe { target in
            let handle = try ProcessHandle(pid: target.pid)
            let fd: Int32
            do { fd = try handle.takeDescriptor(target.childAckFD) } catch let error as GodwitError {
                return .no("pidfd_getfd failed: \(error.errnoCode.map(errnoName) ?? error.message)"
                    + (error.errnoCode == ENOSYS ? " (kernel older than 5.6)" : ""))
            }
            defer { close(fd) }
            var theirs = stat(), ours = stat()
            guard fstat(fd, &theirs) == 0, fstat(target.ackFD, &ours) == 0, theirs.st_ino == ours.st_ino else {
                return .no("pidfd_getfd returned a descriptor that is not the child's pipe")
            }
            return .yes("took fd \(target.childAckFD) from child \(target.pid) with pidfd_getfd: same pipe (inode \(ours.st_ino))")
        }
    }

    /// The whole remote path on a real child: inject userfaultfd, take it, register async
    /// WP, protect, child writes pages {2, 5}, scan: exactly those; scan again: none.
    public static func uffdWriteProtectTracking() -> ProbeResult {
        probe { target in
            let t0 = monotonicNanos()
            let tracker: UffdWriteTracker
            do { tracker = try UffdWriteTracker(pid: target.pid) } catch let error as GodwitError {
                return .no("setting up uffd-wp in the child failed: \(error.message)")
            }
            defer { tracker.close() }
            guard tracker.uffd.supportedFeatures.contains(.wpAsync) else {
                return .no("userfaultfd lacks WP_ASYNC (Linux 6.7+): use the hashing tracker")
            }
            let initial = try tracker.collectWritten(in: target.range)
            let setup = monotonicNanos() - t0
            guard initial.pageCount == target.pages else {
                return .no("the first scan reported \(initial.pageCount) of \(target.pages) resident pages as unprotected")
            }
            try target.write(pages: [2, 5])
            let t1 = monotonicNanos()
            let written = try tracker.collectWritten(in: target.range, refresh: false)
            let scan = monotonicNanos() - t1
            let pages = written.flatMap { $0.pageAddresses.map(target.page(at:)) }
            guard pages == [2, 5] else {
                return .no("child wrote pages {2, 5} but the scan reported \(pages.isEmpty ? "none" : "{\(pages.map(String.init).joined(separator: ", "))}")")
            }
            let again = try tracker.collectWritten(in: target.range, refresh: false)
            guard again.isEmpty else {
                return .no("a second scan without writes still reported \(again.pageCount) pages: re-protection failed")
            }
            tracker.close()
            try target.write(page: 3)  // the child runs on after we let go
            return .yes("child wrote pages {2, 5}: scan reported exactly {2, 5}, second scan none "
                + "(setup \(formatMillis(setup)), child stopped \(formatMillis(tracker.uffd.targetStoppedNanos)), scan \(formatMillis(scan)))")
        }
    }

    /// process_vm_readv of the child's pages, checked against the markers it wrote.
    public static func processVMReadv() -> ProbeResult {
        probe { target in
            let reader = ProcessMemoryReader(pid: target.pid)
            let bytes: [UInt8]
            do { bytes = try reader.read(at: target.base, count: target.pages * Int(target.pageSize)) } catch let error as GodwitError {
                return .no("process_vm_readv failed: \(error.errnoCode.map(errnoName) ?? error.message)")
            }
            guard bytes.count == target.pages * Int(target.pageSize) else {
                return .no("process_vm_readv returned \(bytes.count) bytes of \(target.pages * Int(target.pageSize))")
            }
            for i in 0..<target.pages {
                let offset = i * Int(target.pageSize) + 8
                let value = bytes[offset..<offset + 8].withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                guard value == ProbeTarget.magic ^ UInt64(i) else {
                    return .no("process_vm_readv returned wrong content for page \(i)")
                }
            }
            return .yes("read \(target.pages) pages of child \(target.pid) with process_vm_readv; content verified")
        }
    }

    // MARK: - helpers

    /// Runs `body` against a fresh 8-page child, which is always killed and reaped.
    private static func probe(pages: Int = 8, _ body: (ProbeTarget) throws -> ProbeResult) -> ProbeResult {
        let target: ProbeTarget
        do { target = try ProbeTarget(pages: pages) } catch {
            return .no("could not start a probe child: \(error)")
        }
        defer { target.terminate() }
        do { return try body(target) } catch let error as GodwitError {
            return .no(error.message)
        } catch {
            return .no("\(error)")
        }
    }

    /// Raw 64-bit pagemap entries for page addresses of `pid`.
    static func pagemapEntries(pid: pid_t, addresses: [UInt64]) throws -> [UInt64] {
        let path = "/proc/\(pid)/pagemap"
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw GodwitError.errno("open(\(path))") }
        defer { close(fd) }
        return try addresses.map { address in
            var entry: UInt64 = 0
            let n = pread(fd, &entry, 8, off_t(address / systemPageSize * 8))
            guard n == 8 else { throw GodwitError.errno("pread(\(path))") }
            return entry
        }
    }
}
