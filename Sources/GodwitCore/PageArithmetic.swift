import Foundation

/// Address arithmetic on runs of pages whose start and length came from outside (a peer,
/// an image file): Swift traps on overflow, so every such sum goes through here and an
/// impossible run becomes an error instead of a dead daemon.
public enum PageArithmetic {
    /// `vaddr + pages * pageSize`, or nil when the run would reach past the last address
    /// (a run may end at most at UInt64.max, so its end is always representable).
    public static func end(of vaddr: UInt64, pages: UInt64, pageSize: UInt64) -> UInt64? {
        let (bytes, productOverflow) = pages.multipliedReportingOverflow(by: pageSize)
        if productOverflow { return nil }
        let (end, sumOverflow) = vaddr.addingReportingOverflow(bytes)
        return sumOverflow ? nil : end
    }

    /// The most pages a run starting at `vaddr` may have (see `end`).
    public static func pagesBeforeEnd(of vaddr: UInt64, pageSize: UInt64) -> UInt64 {
        (UInt64.max - vaddr) / pageSize
    }

    public static func isAligned(_ vaddr: UInt64, pageSize: UInt64) -> Bool {
        pageSize > 0 && vaddr % pageSize == 0
    }
}

/// What this host could hold at most, RAM plus swap, in pages: a container (or one image)
/// claiming more could never be restored here, so such a claim is refused before anything
/// is allocated for it.
public enum HostMemory {
    public static let pages: UInt64 = {
        let pageSize = UInt64(max(1, sysconf(Int32(_SC_PAGESIZE))))
        let ram = sysconf(Int32(_SC_PHYS_PAGES))
        guard ram > 0 else { return 1 << 32 }  // 16 TiB: no figure, a generous one
        return UInt64(ram) + swapBytes() / pageSize
    }()

    /// SwapTotal of /proc/meminfo (kB); 0 when unreadable.
    static func swapBytes() -> UInt64 {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("SwapTotal:") }),
              let kB = line.split(separator: " ").dropFirst().first.flatMap({ UInt64($0) }) else { return 0 }
        return kB.multipliedReportingOverflow(by: 1024).overflow ? 0 : kB * 1024
    }
}
