import Foundation

// Shared by every fuzz target (compiled into each; see scripts/fuzz.sh).
//
// A target defines `fuzzOne(_ bytes: [UInt8])` and `fuzzSeeds() -> [String: [UInt8]]`.
// Errors thrown are fine (hostile input must give errors); a trap, an ASan report or a
// broken invariant (`fuzzCheck`) is a crash that libFuzzer saves as an artifact.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    fuzzOne(bytes)
    return 0
}

/// With GODWIT_FUZZ_SEEDS=DIR, writes the target's seeds there first (scripts/fuzz.sh
/// runs each target once with -runs=0 to build its starting corpus).
@_cdecl("LLVMFuzzerInitialize")
public func fuzzerInitialize(_ argc: UnsafeMutablePointer<CInt>?, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>?) -> CInt {
    if let dir = ProcessInfo.processInfo.environment["GODWIT_FUZZ_SEEDS"] {
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        for (name, bytes) in fuzzSeeds() {
            _ = FileManager.default.createFile(atPath: dir + "/seed-" + name, contents: Data(bytes))
        }
    }
    return 0
}

/// An invariant the code under test must keep whatever the input.
func fuzzCheck(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() { fatalError("invariant broken: \(message())") }
}

/// Reads fields off the front of the fuzzer's bytes; missing bytes read as zero.
struct FuzzBytes {
    var bytes: [UInt8]
    var offset = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var isEmpty: Bool { offset >= bytes.count }
    var rest: [UInt8] { offset < bytes.count ? Array(bytes[offset...]) : [] }

    mutating func take(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, offset + count)
        defer { offset = end }
        return offset < end ? Array(bytes[offset..<end]) : []
    }

    mutating func integer<T: FixedWidthInteger>(_: T.Type = T.self) -> T {
        var value: T = 0
        for (i, b) in take(MemoryLayout<T>.size).enumerated() { value |= T(truncatingIfNeeded: b) << (8 * i) }
        return value
    }
}

func littleEndian<T: FixedWidthInteger>(_ value: T) -> [UInt8] { withUnsafeBytes(of: value.littleEndian) { Array($0) } }
