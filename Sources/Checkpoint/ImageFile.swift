import Foundation
import GodwitCore

/// CRIU image files: a magic header, then entries of (u32 little-endian size, protobuf bytes).
/// Godwit reads a few of them (stats now; pagemaps when rebuilding images from a page store),
/// so a minimal protobuf reader lives here instead of a generated dependency.
public struct ImageFile {
    /// Service images (stats, inventory...) carry this first magic, others IMG_COMMON_MAGIC.
    static let serviceMagic: UInt32 = 0x5510_5940
    static let commonMagic: UInt32 = 0x5456_4319  // IMG_COMMON_MAGIC (criu/include/magic.h)

    public var entries: [Data]

    public init(path: String) throws {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw GodwitError("cannot read CRIU image \(path)")
        }
        try self.init(data: data, name: path)
    }

    public init(data: Data, name: String = "image") throws {
        var offset = 0
        func u32() -> UInt32? {
            guard offset + 4 <= data.count else { return nil }
            defer { offset += 4 }
            return data.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
        }
        guard let first = u32() else { throw GodwitError("CRIU image \(name) is empty") }
        // Images with a common/service magic have a second, per-type magic.
        if first == Self.serviceMagic || first == Self.commonMagic { _ = u32() }
        var entries: [Data] = []
        while let size = u32() {
            let end = offset + Int(size)
            guard end <= data.count else { throw GodwitError("CRIU image \(name) is truncated") }
            entries.append(data.subdata(in: data.startIndex + offset ..< data.startIndex + end))
            offset = end
        }
        self.entries = entries
    }
}

/// Decodes protobuf fields without a schema: field number → varint value or nested bytes.
public struct ProtobufMessage {
    public var varints: [Int: UInt64] = [:]
    public var messages: [Int: Data] = [:]

    /// Image files come from the source host: every length and varint is checked against
    /// the bytes there are, never converted with a trapping initializer.
    public init(_ data: Data) throws {
        let bytes = [UInt8](data)
        var i = 0
        func varint() throws -> UInt64 {
            var value: UInt64 = 0, shift: UInt64 = 0
            while true {
                guard i < bytes.count else { throw GodwitError("malformed protobuf: a varint runs past the end") }
                let b = bytes[i]; i += 1
                // The 10th byte holds bit 63 only; anything more does not fit 64 bits.
                if shift == 63, b > 1 { throw GodwitError("malformed protobuf: a varint does not fit 64 bits") }
                value |= UInt64(b & 0x7f) << shift
                if b & 0x80 == 0 { return value }
                shift += 7
            }
        }
        func skip(_ count: Int) throws {
            guard count <= bytes.count - i else { throw GodwitError("malformed protobuf: a fixed-size field runs past the end") }
            i += count
        }
        while i < bytes.count {
            let key = try varint()
            let field = Int(key >> 3)
            switch key & 7 {
            case 0: varints[field] = try varint()
            case 1: try skip(8)
            case 5: try skip(4)
            case 2:
                let length = try varint()
                guard length <= UInt64(bytes.count - i) else {
                    throw GodwitError("malformed protobuf: a field of \(length) bytes with \(bytes.count - i) left")
                }
                messages[field] = Data(bytes[i ..< i + Int(length)])
                i += Int(length)
            default: throw GodwitError("unsupported protobuf wire type \(key & 7)")
            }
        }
    }
}

/// CRIU's stats-dump / stats-restore files as figures (times in microseconds).
public struct CRIUStats: Codable, Sendable, Equatable {
    public var freezingTime: UInt64?
    public var frozenTime: UInt64?
    public var memdumpTime: UInt64?
    public var memwriteTime: UInt64?
    public var pagesScanned: UInt64?
    public var pagesSkippedParent: UInt64?
    public var pagesWritten: UInt64?
    public var pagesLazy: UInt64?
    public var forkingTime: UInt64?
    public var restoreTime: UInt64?
    public var pagesRestored: UInt64?

    public init() {}

    /// Reads stats-dump and/or stats-restore from an images directory (missing files are skipped).
    public static func read(directory: String) throws -> CRIUStats {
        var stats = CRIUStats()
        for name in ["stats-dump", "stats-restore"] {
            let path = directory + "/" + name
            guard FileManager.default.fileExists(atPath: path) else { continue }
            for entry in try ImageFile(path: path).entries { try stats.merge(statsEntry: entry) }
        }
        return stats
    }

    /// stats_entry { optional dump_stats_entry dump = 1; optional restore_stats_entry restore = 2; }
    mutating func merge(statsEntry data: Data) throws {
        let entry = try ProtobufMessage(data)
        if let dump = entry.messages[1] {
            let d = try ProtobufMessage(dump)
            freezingTime = d.varints[1]; frozenTime = d.varints[2]
            memdumpTime = d.varints[3]; memwriteTime = d.varints[4]
            pagesScanned = d.varints[5]; pagesSkippedParent = d.varints[6]
            pagesWritten = d.varints[7]; pagesLazy = d.varints[9]
        }
        if let restore = entry.messages[2] {
            let r = try ProtobufMessage(restore)
            forkingTime = r.varints[3]; restoreTime = r.varints[4]; pagesRestored = r.varints[5]
        }
    }
}
