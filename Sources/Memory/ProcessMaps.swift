import Foundation
import GodwitCore

/// One line of /proc/PID/maps: a VMA of another process.
public struct MemoryMapping: Sendable, Hashable, CustomStringConvertible {
    public var start: UInt64
    public var end: UInt64
    /// "rw-p" style: read, write, execute, p(rivate)/s(hared).
    public var permissions: String
    public var offset: UInt64
    public var inode: UInt64
    /// File path, "[heap]", "[stack]", "[vdso]", "[anon:name]"..., or "" for anonymous.
    public var path: String

    public var range: Range<UInt64> { start..<end }
    public var size: UInt64 { end - start }
    public var isReadable: Bool { permissions.hasPrefix("r") }
    public var isWritable: Bool { permissions.dropFirst().first == "w" }
    public var isExecutable: Bool { permissions.dropFirst(2).first == "x" }
    public var isPrivate: Bool { permissions.dropFirst(3).first == "p" }
    public var isShared: Bool { permissions.dropFirst(3).first == "s" }

    /// Kernel-provided areas that belong to no program state ([vdso], [vvar], [vsyscall]...).
    /// Their content is recreated by the kernel on the destination, so never tracked.
    public var isKernelSpecial: Bool {
        ["[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"].contains(path)
    }

    /// What a write tracker registers: memory the program can write and that is its own.
    /// Shared writable mappings (shmem, memfd, SysV) need separate handling (not yet).
    public var isWritablePrivate: Bool { isWritable && isPrivate && !isKernelSpecial }

    public var description: String {
        "\(String(start, radix: 16))-\(String(end, radix: 16)) \(permissions) \(path.isEmpty ? "[anon]" : path)"
    }
}

public enum ProcessMaps {
    /// Reads and parses /proc/PID/maps. Throws when the process is gone or unreadable.
    public static func read(pid: pid_t) throws -> [MemoryMapping] {
        let path = "/proc/\(pid)/maps"
        guard let data = HostEnvironment.readBytes(path) else {
            throw GodwitError("cannot read \(path): process \(pid) is gone or not accessible",
                              hint: "memory tracking needs root and a running process")
        }
        return parse(bytes: data)
    }

    /// Parses maps text; lines that don't look like a mapping are skipped.
    public static func parse(_ text: String) -> [MemoryMapping] { parse(bytes: Array(text.utf8)) }

    /// Byte-level parser: a container can have thousands of mappings and we re-read them
    /// every round, so this avoids Foundation string handling (10x slower here).
    public static func parse(bytes: [UInt8]) -> [MemoryMapping] {
        var result: [MemoryMapping] = []
        var i = 0
        let n = bytes.count
        func skipSpaces() { while i < n, bytes[i] == 0x20 { i += 1 } }
        func number(radix: UInt64) -> UInt64? {
            var value: UInt64 = 0
            var digits = 0
            while i < n {
                let c = bytes[i]
                let d: UInt64
                switch c {
                case 0x30...0x39: d = UInt64(c - 0x30)
                case 0x61...0x66 where radix == 16: d = UInt64(c - 0x61 + 10)
                case 0x41...0x46 where radix == 16: d = UInt64(c - 0x41 + 10)
                default: return digits > 0 ? value : nil
                }
                value = value &* radix &+ d
                digits += 1
                i += 1
            }
            return digits > 0 ? value : nil
        }
        while i < n {
            var lineEnd = i
            while lineEnd < n, bytes[lineEnd] != 0x0A { lineEnd += 1 }
            defer { i = lineEnd + 1 }
            // start-end perms offset dev inode [path]; the path may contain spaces.
            guard let start = number(radix: 16), i < lineEnd, bytes[i] == 0x2D else { continue }
            i += 1
            guard let end = number(radix: 16) else { continue }
            skipSpaces()
            let permStart = i
            while i < lineEnd, bytes[i] != 0x20 { i += 1 }
            let permissions = String(decoding: bytes[permStart..<i], as: UTF8.self)
            skipSpaces()
            guard let offset = number(radix: 16) else { continue }
            skipSpaces()
            while i < lineEnd, bytes[i] != 0x20 { i += 1 }  // dev major:minor
            skipSpaces()
            guard let inode = number(radix: 10), permissions.utf8.count == 4 else { continue }
            skipSpaces()
            var pathEnd = lineEnd
            while pathEnd > i, bytes[pathEnd - 1] == 0x20 { pathEnd -= 1 }
            let path = i < pathEnd ? String(decoding: bytes[i..<pathEnd], as: UTF8.self) : ""
            result.append(MemoryMapping(start: start, end: end, permissions: permissions,
                                        offset: offset, inode: inode, path: path))
        }
        return result
    }
}
