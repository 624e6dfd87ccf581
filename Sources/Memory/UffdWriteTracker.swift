import Foundation
import GodwitCore

/// Tracks which pages one process writes, without soft-dirty: a RemoteUserfaultfd
/// (async write-protect registration of its writable private mappings) plus a
/// PagemapScanner (read + re-protect in one walk). The per-container DirtyTracker composes
/// one of these per process.
///
/// Round protocol: `collectWritten()` registers new mappings, then scans. The FIRST call
/// reports every resident page (nothing is protected yet) and protects them; later calls
/// report exactly what was written since the previous call. Scan first, then copy.
/// Protection is marker-free: only resident pages get protected; a never-touched page
/// that is written later shows up as written because its fresh pte carries no wp bit.
///
/// Not covered here (the DirtyTracker's job): pages that vanish (MADV_DONTNEED, munmap)
/// are not reported as written, compare resident sets for those; mappings moved by
/// mremap; shared writable mappings; children forked later.
public final class UffdWriteTracker {
    public let pid: pid_t
    public let uffd: RemoteUserfaultfd
    public let scanner: PagemapScanner
    /// The latest registration report (what is and isn't tracked).
    public private(set) var lastRegistration = RemoteUserfaultfd.RegistrationReport()
    public private(set) var rounds = 0

    public init(pid: pid_t, scanCapacity: Int = 4096) throws {
        self.pid = pid
        scanner = try PagemapScanner(pid: pid, capacity: scanCapacity)
        uffd = try RemoteUserfaultfd(pid: pid)
        lastRegistration = try uffd.registerWritablePrivateMappings(scanner: scanner)
    }

    /// Registers mappings created since the last round (cheap when there are none).
    @discardableResult
    public func refreshRegistrations() throws -> RemoteUserfaultfd.RegistrationReport {
        lastRegistration = try uffd.registerWritablePrivateMappings(scanner: scanner)
        return lastRegistration
    }

    /// One tracking round over `range` (default: the span of all writable private
    /// mappings as of the latest registration). Unregistered mappings inside the span are skipped by the kernel; they
    /// are registered first, so only a mapping created during this very call is missed,
    /// and it is reported in full on the next round.
    ///
    /// `protect: false` leaves the reported pages writable: the caller then calls
    /// `protect(_:)` on each range right before it reads it (deferred protection), and
    /// until it does, the pages keep being reported (never lost, at worst sent twice).
    public func collectWritten(in range: Range<UInt64>? = nil, refresh: Bool = true,
                               protect: Bool = true) throws -> [PageRegion] {
        if refresh { try refreshRegistrations() }
        let span = range ?? lastRegistration.span
        rounds += 1
        guard !span.isEmpty else { return [] }
        return protect ? try scanner.collectWritten(in: span)
                       : try scanner.collectWrittenWithoutProtecting(in: span)
    }

    /// Write-protects the written pages of `range` (deferred protection, see above).
    ///
    /// PAGEMAP_SCAN with WP_MATCHING rather than UFFDIO_WRITEPROTECT on the grabbed
    /// userfaultfd: it protects only present/swapped pages (UFFDIO_WRITEPROTECT would
    /// install uffd-wp markers on ptes emptied since the scan, which CRIU then dumps as
    /// zero pages), it skips VMAs that are not registered instead of failing, and it
    /// touches only pages that are unprotected, i.e. exactly the ones the scan reported.
    public func protect(_ range: Range<UInt64>) throws {
        try scanner.protectWritten(in: range)
    }

    /// Stops tracking: the kernel drops the registrations; the process runs on.
    public func close() { uffd.close() }
}
