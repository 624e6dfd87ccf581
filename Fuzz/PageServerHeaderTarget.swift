import Foundation
import GodwitCore

// Target page-server-header: CRIU's 32-byte page-server header as Godwit decodes it from
// lazy-pages and from the source's page server (Sources/Checkpoint compiled in), and the
// headers it derives from a decoded one (replies, GETs on its behalf).
//
// Input: [32-byte header][u64 pages for the derived headers][u64 vaddr].

func fuzzOne(_ bytes: [UInt8]) {
    var input = FuzzBytes(bytes)
    let raw = input.take(PageServerHeader.size)
    let pages = Int(truncatingIfNeeded: input.integer(UInt64.self))
    let vaddr = input.integer(UInt64.self)
    guard let header = try? PageServerHeader(bytes: raw) else {
        fuzzCheck(raw.count < PageServerHeader.size || decodeShouldFail(raw), "refused a valid header \(raw)")
        return
    }
    fuzzCheck(!decodeShouldFail(raw), "accepted \(header)")
    fuzzCheck(header.encode() == raw, "\(header) does not re-encode to its bytes")
    fuzzCheck(header.pages >= 0 && header.pages <= PageServerHeader.maxPages, "\(header.pages) pages")
    fuzzCheck(header.endAddress >= header.vaddr && header.byteCount == header.pages * PageServerHeader.pageSize, "\(header)")
    _ = header.description
    _ = (header.isGet, header.isClose, header.isPresentPages, header.nsPID, header.command, header.flags)
    for derived in [try? header.reply(pages: pages), try? header.asGet(pages: pages), try? header.asGet(pages: pages, vaddr: vaddr)] {
        guard let derived else { continue }
        fuzzCheck((try? PageServerHeader(bytes: derived.encode())) == derived, "\(derived) does not round-trip")
        fuzzCheck(derived.padding == header.padding && derived.dstID == header.dstID, "\(derived) lost the request's padding or id")
    }
    if let pid = header.nsPID, let get = try? PageServerHeader.get(nsPID: pid, vaddr: vaddr, pages: pages) {
        fuzzCheck(get.nsPID == pid && get.isGet, "\(get)")
    }
}

/// The decoder's rules, restated independently: a count within maxPages whose run does
/// not pass the end of the address space.
func decodeShouldFail(_ raw: [UInt8]) -> Bool {
    var input = FuzzBytes(raw)
    _ = input.take(8)
    let pages = input.integer(UInt64.self), vaddr = input.integer(UInt64.self)
    guard pages <= UInt64(PageServerHeader.maxPages) else { return true }
    return vaddr.addingReportingOverflow(pages * UInt64(PageServerHeader.pageSize)).overflow
}

func fuzzSeeds() -> [String: [UInt8]] {
    func seed(_ header: PageServerHeader?, pages: UInt64 = 1, vaddr: UInt64 = 0x1000) -> [UInt8] {
        (header?.encode() ?? []) + littleEndian(pages) + littleEndian(vaddr)
    }
    return [
        "get": seed(try? PageServerHeader.get(nsPID: 17, vaddr: 0x7f00_0000_1000, pages: 16, padding: 0xDEC0_AD0B)),
        "reply": seed(try? PageServerHeader.get(nsPID: 1, vaddr: 0x40_0000, pages: 1024).reply(pages: 3), pages: 1024),
        "close": seed(PageServerHeader.closeRequest),
        "top": seed(try? PageServerHeader.get(nsPID: 2, vaddr: UInt64.max - 2 * UInt64(PageServerHeader.pageSize) + 1, pages: 1),
                    pages: 2, vaddr: UInt64.max),
    ]
}
