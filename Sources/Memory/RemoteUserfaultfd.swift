import CGodwit
import Foundation
import GodwitCore

/// userfaultfd feature bits (UFFDIO_API).
public struct UffdFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let pagefaultFlagWP = UffdFeatures(rawValue: 1 << 0)
    public static let eventFork = UffdFeatures(rawValue: 1 << 1)
    public static let eventRemap = UffdFeatures(rawValue: 1 << 2)
    public static let eventRemove = UffdFeatures(rawValue: 1 << 3)
    public static let missingHugetlbfs = UffdFeatures(rawValue: 1 << 4)
    public static let missingShmem = UffdFeatures(rawValue: 1 << 5)
    public static let eventUnmap = UffdFeatures(rawValue: 1 << 6)
    public static let sigbus = UffdFeatures(rawValue: 1 << 7)
    public static let threadID = UffdFeatures(rawValue: 1 << 8)
    public static let minorHugetlbfs = UffdFeatures(rawValue: 1 << 9)
    public static let minorShmem = UffdFeatures(rawValue: 1 << 10)
    public static let exactAddress = UffdFeatures(rawValue: 1 << 11)
    public static let wpHugetlbfsShmem = UffdFeatures(rawValue: UInt64(UFFD_FEATURE_WP_HUGETLBFS_SHMEM))
    public static let wpUnpopulated = UffdFeatures(rawValue: UInt64(UFFD_FEATURE_WP_UNPOPULATED))
    public static let poison = UffdFeatures(rawValue: UInt64(UFFD_FEATURE_POISON))
    /// Write faults on protected pages are resolved by the kernel (no handler); what was
    /// written is read back with PAGEMAP_SCAN. The basis of tracking without soft-dirty.
    public static let wpAsync = UffdFeatures(rawValue: UInt64(UFFD_FEATURE_WP_ASYNC))
    public static let move = UffdFeatures(rawValue: UInt64(UFFD_FEATURE_MOVE))

    public static let named: [(UffdFeatures, String)] = [
        (.wpAsync, "WP_ASYNC"), (.wpUnpopulated, "WP_UNPOPULATED"),
        (.wpHugetlbfsShmem, "WP_HUGETLBFS_SHMEM"), (.move, "MOVE"), (.poison, "POISON"),
        (.pagefaultFlagWP, "PAGEFAULT_FLAG_WP"), (.eventFork, "EVENT_FORK"), (.eventRemap, "EVENT_REMAP"),
        (.eventRemove, "EVENT_REMOVE"), (.eventUnmap, "EVENT_UNMAP"), (.missingShmem, "MISSING_SHMEM"),
        (.missingHugetlbfs, "MISSING_HUGETLBFS"), (.minorShmem, "MINOR_SHMEM"),
        (.minorHugetlbfs, "MINOR_HUGETLBFS"), (.sigbus, "SIGBUS"), (.threadID, "THREAD_ID"),
        (.exactAddress, "EXACT_ADDRESS"),
    ]

    public var description: String {
        "0x" + String(rawValue, radix: 16) + " (" + Self.named.filter { contains($0.0) }.map(\.1).joined(separator: " ") + ")"
    }
}

/// A userfaultfd created INSIDE another process (so it acts on that process's memory) but
/// held by us: we inject userfaultfd(2) with ptrace, copy the descriptor out with
/// pidfd_getfd, close the target's copy and detach. The target is stopped for well under
/// a millisecond and never sees the descriptor. From then on UFFDIO_* ioctls on `fd` act
/// on the target's mm. Closing `fd` (or our death) unregisters everything and the target
/// runs on unaffected.
///
/// Scope: one mm. Children the target forks later are not tracked (attach them
/// separately); threads share the mm and are covered.
public final class RemoteUserfaultfd {
    public let pid: pid_t
    public private(set) var fd: Int32
    /// Every feature the kernel supports (UFFDIO_API reports these, not the enabled ones).
    public let supportedFeatures: UffdFeatures
    /// What we enabled. The kernel adds WP_UNPOPULATED to WP_ASYNC by itself; it is what
    /// makes anonymous VMAs eligible for PAGEMAP_SCAN's protection (PAGE_IS_WPALLOWED).
    public let enabledFeatures: UffdFeatures
    /// How long the target's thread was stopped for the injection.
    public let targetStoppedNanos: UInt64

    public struct RegistrationReport: Sendable {
        /// Mappings registered by this call.
        public var registered: [MemoryMapping] = []
        /// Writable private mappings that were already registered.
        public var alreadyTracked = 0
        /// Mappings the kernel refused, with the reason (their writes are NOT tracked).
        public var refused: [(mapping: MemoryMapping, reason: String)] = []
        /// From the lowest to the highest writable private mapping: the range a tracking
        /// scan covers (unregistered mappings inside it are skipped by the kernel).
        public var span: Range<UInt64> = 0..<0
    }

    /// Attaches to `pid`, creates the uffd in it and configures it for async write-protect
    /// tracking. Throws with a hint when userfaultfd is refused (seccomp, sysctl).
    public init(pid: pid_t, features: UffdFeatures = [.wpAsync]) throws {
        self.pid = pid
        let handle = try ProcessHandle(pid: pid)
        let tid = PtraceSession.injectableThread(of: pid)
        // USER_MODE_ONLY: required for unprivileged/user-namespaced targets
        // (vm.unprivileged_userfaultfd=0) and harmless for WP_ASYNC, which never faults to us.
        let flags = Int(O_CLOEXEC | O_NONBLOCK | Int32(UFFD_USER_MODE_ONLY))
        var session: PtraceSession?
        let taken: Int32 = try PtraceSession.with(tid: tid) { s in
            session = s
            let remote = try s.syscall(Int(CGW_NR_userfaultfd), flags)
            guard remote >= 0 else {
                throw GodwitError("userfaultfd(2) inside process \(pid) failed: \(errnoName(Int32(-remote)))",
                                  hint: remote == -Int(EPERM)
                                      ? "a seccomp profile (or vm.unprivileged_userfaultfd=0) blocks userfaultfd: use the hashing tracker"
                                      : "kernel without CONFIG_USERFAULTFD: use the hashing tracker")
            }
            let mine = Result { try handle.takeDescriptor(Int32(remote)) }
            // Always close the target's copy, even if taking it failed.
            _ = try? s.syscall(Int(CGW_NR_close), remote)
            return try mine.get()
        }
        targetStoppedNanos = session?.stoppedNanos ?? 0
        fd = taken
        do {
            var supported: UInt64 = 0, ioctls: UInt64 = 0
            try checkCGW(cgw_uffd_api(taken, features.rawValue, &supported, &ioctls), "UFFDIO_API(\(features))",
                         hint: "this kernel lacks a requested userfaultfd feature (WP_ASYNC needs Linux 6.7+)")
            supportedFeatures = UffdFeatures(rawValue: supported)
            enabledFeatures = features.contains(.wpAsync) ? features.union(.wpUnpopulated) : features
        } catch {
            Glibc.close(taken)
            fd = -1
            throw error
        }
    }

    deinit { close() }

    /// Closes the uffd: the kernel drops every registration and write-protection state.
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    private func requireOpen() throws {
        guard fd >= 0 else { throw GodwitError("the userfaultfd for process \(pid) is already closed") }
    }

    /// Registers [range) for write-protect tracking. It must be covered by mappings.
    public func register(_ range: Range<UInt64>) throws {
        try requireOpen()
        try checkCGW(cgw_uffd_register(fd, range.lowerBound, range.upperBound - range.lowerBound,
                                       UInt64(UFFDIO_REGISTER_MODE_WP), nil),
                     "UFFDIO_REGISTER(WP) \(String(range.lowerBound, radix: 16))-\(String(range.upperBound, radix: 16)) in \(pid)")
    }

    /// UFFDIO_WRITEPROTECT. Prefer a protecting PagemapScanner scan: this call also puts
    /// markers on never-touched pages, which CRIU then dumps as real zero pages.
    public func writeProtect(_ range: Range<UInt64>, _ protect: Bool = true) throws {
        try requireOpen()
        try checkCGW(cgw_uffd_writeprotect(fd, range.lowerBound, range.upperBound - range.lowerBound, protect ? 1 : 0),
                     "UFFDIO_WRITEPROTECT in \(pid)")
    }

    /// Registers every writable private mapping of the target that isn't tracked yet, as
    /// judged by the kernel (PAGE_IS_WPALLOWED), so a mapping replaced at the same address
    /// is caught too. Call it every round: mmap and brk growth create new mappings.
    /// Registration alone protects nothing; the first protecting scan does.
    @discardableResult
    public func registerWritablePrivateMappings(scanner: PagemapScanner) throws -> RegistrationReport {
        try requireOpen()
        let candidates = try ProcessMaps.read(pid: pid).filter(\.isWritablePrivate)
        var report = RegistrationReport()
        guard let low = candidates.first?.start, let high = candidates.last?.end else { return report }
        report.span = low..<high
        let untracked = try scanner.scan(low..<high, .untracked)
        var u = 0
        for mapping in candidates {
            while u < untracked.count, untracked[u].end <= mapping.start { u += 1 }
            let overlaps = u < untracked.count && untracked[u].start < mapping.end
            guard overlaps else {
                report.alreadyTracked += 1
                continue
            }
            do {
                try register(mapping.range)
                report.registered.append(mapping)
            } catch let error as GodwitError {
                // EINVAL: e.g. VM_IO/PFNMAP or mlocked-on-fault special mappings; ENOMEM:
                // the mapping changed under us (it is retried next round).
                report.refused.append((mapping, error.errnoCode.map(errnoName) ?? error.message))
            }
        }
        return report
    }
}
