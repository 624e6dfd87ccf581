import Foundation

/// A link rate in bits per second, written the way tc writes rates ("1gbit", "500mbit",
/// "125mbps"). We parse it ourselves so a typo is reported before any qdisc is touched,
/// and we always hand tc an unambiguous "<n>bit" so its byte/bit suffixes can't bite.
public struct Bandwidth: Hashable, Comparable, Codable, Sendable, CustomStringConvertible {
    public let bitsPerSecond: UInt64

    public init(bitsPerSecond: UInt64) {
        self.bitsPerSecond = bitsPerSecond
    }

    /// tc's rate units (case-insensitive, as in tc). Beware: in tc `bps` means BYTES per
    /// second, so "125mbps" is the same rate as "1gbit".
    public static let units: [(name: String, bitsPerUnit: Double)] = [
        ("bit", 1), ("kbit", 1e3), ("mbit", 1e6), ("gbit", 1e9), ("tbit", 1e12),
        ("kibit", 1024), ("mibit", 1048576), ("gibit", 1073741824), ("tibit", 1099511627776),
        ("bps", 8), ("kbps", 8e3), ("mbps", 8e6), ("gbps", 8e9), ("tbps", 8e12),
        ("kibps", 8 * 1024), ("mibps", 8 * 1048576), ("gibps", 8 * 1073741824), ("tibps", 8 * 1099511627776),
    ]

    /// The rate tc's 64-bit rate field can carry, with room to spare; anything above is a typo.
    public static let maximum = Bandwidth(bitsPerSecond: 100_000_000_000_000)

    /// Parses "<number><unit>", e.g. "1gbit", "2.5mbit", "125MBps".
    public init(parsing text: String) throws {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let numberPart = String(trimmed.prefix(while: { $0.isNumber || $0 == "." }))
        let unitPart = String(trimmed.dropFirst(numberPart.count)).lowercased()
        let unitList = Bandwidth.units.map(\.name).joined(separator: ", ")
        guard !numberPart.isEmpty, let number = Double(numberPart) else {
            throw GodwitError("invalid rate '\(text)': it must start with a number",
                              hint: "write <number><unit>, e.g. 1gbit or 500mbit; units: \(unitList)")
        }
        guard !unitPart.isEmpty else {
            throw GodwitError("invalid rate '\(text)': the unit is missing",
                              hint: "add a unit, e.g. \(numberPart)mbit; units: \(unitList) (bps = bytes/s, as in tc)")
        }
        guard let unit = Bandwidth.units.first(where: { $0.name == unitPart }) else {
            throw GodwitError("invalid rate '\(text)': unknown unit '\(unitPart)'",
                              hint: "valid units: \(unitList) (bps = bytes/s, as in tc)")
        }
        let bits = (number * unit.bitsPerUnit).rounded()
        guard bits >= 8 else {
            throw GodwitError("invalid rate '\(text)': too small",
                              hint: "use at least 8bit; to remove shaping use `unlimited`")
        }
        guard bits <= Double(Bandwidth.maximum.bitsPerSecond) else {
            throw GodwitError("invalid rate '\(text)': larger than \(Bandwidth.maximum)",
                              hint: "use a rate up to 100tbit, or `unlimited` for no shaping")
        }
        self.bitsPerSecond = UInt64(bits)
    }

    public var bytesPerSecond: Double { Double(bitsPerSecond) / 8 }
    public var megabitsPerSecond: Double { Double(bitsPerSecond) / 1e6 }

    /// Exact and unit-proof: what we pass to `tc ... rate`.
    public var tcRate: String { "\(bitsPerSecond)bit" }

    /// The shortest exact decimal form ("1gbit", "1500mbit"), else the raw bit count.
    public var description: String {
        for (name, scale) in [("tbit", UInt64(1_000_000_000_000)), ("gbit", 1_000_000_000), ("mbit", 1_000_000), ("kbit", 1000)]
        where bitsPerSecond % scale == 0 {
            return "\(bitsPerSecond / scale)\(name)"
        }
        return "\(bitsPerSecond)bit"
    }

    /// Token-bucket depth for tbf. tbf needs a bucket of at least one timer tick's worth of
    /// traffic to reach its rate; ~2 ms of traffic (256 KB at 1 gbit, the setting measured at
    /// 119.6 MB/s on this machine kind) without going below 32 KiB, so MTU-sized and GSO
    /// packets always fit (tbf segments the rest).
    public var tbfBurstBytes: UInt64 {
        max(32 * 1024, bitsPerSecond / 8 / 500)
    }

    public static func < (lhs: Bandwidth, rhs: Bandwidth) -> Bool { lhs.bitsPerSecond < rhs.bitsPerSecond }
}

/// What `lab shape` and `lab up --bandwidth` accept: a rate, or `unlimited` for no qdisc.
public enum LinkRate: Hashable, Sendable, CustomStringConvertible {
    case unlimited
    case limited(Bandwidth)

    public init(parsing text: String) throws {
        if text.lowercased() == "unlimited" {
            self = .unlimited
        } else {
            do {
                self = .limited(try Bandwidth(parsing: text))
            } catch var error as GodwitError {
                error.hint = (error.hint ?? "") + "; or `unlimited` to remove shaping"
                throw error
            }
        }
    }

    public var bandwidth: Bandwidth? {
        if case .limited(let bandwidth) = self { return bandwidth }
        return nil
    }

    public var description: String { bandwidth?.description ?? "unlimited" }
}
