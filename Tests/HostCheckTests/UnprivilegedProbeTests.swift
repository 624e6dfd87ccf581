import Foundation
import Testing
import GodwitCore
import Runtime
@testable import HostCheck

/// The pure parts of the unprivileged section: which accounts clash with the range, the
/// file system type from mountinfo, the sysctl's meaning. The real probe runs end to end in
/// CLITests/UnprivilegedCheckTests.
@Suite struct UnprivilegedProbeTests {
    /// 1000000:1000000000, as on a host without /etc/subuid.
    let range = SubordinateRange.fallback

    @Test func passwdAccountsInsideTheRangeAreFound() {
        let passwd = """
            root:x:0:0:root:/root:/bin/bash
            # a comment:x:1000001:1
            nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
            below:x:999999:999999::/home/below:/bin/sh
            first:x:1000000:100::/home/first:/bin/sh
            slotend:x:1065535:100::/home/slotend:/bin/sh
            last:x:1000999999:100::/home/last:/bin/sh
            after:x:1001000000:100::/home/after:/bin/sh
            broken:x:notanumber:100::/:/bin/sh
            short:x

            """
        #expect(UnprivilegedProbe.accounts(inside: range, passwd) == ["first (1000000)", "slotend (1065535)", "last (1000999999)"])
        #expect(UnprivilegedProbe.accounts(inside: range, "root:x:0:0::/root:/bin/sh\nme:x:1000:1000::/home/me:/bin/sh\n").isEmpty)
    }

    @Test func aClashFailsTheRangeAndNamesTheAccounts() {
        let clean = UnprivilegedProbe.checkRange(range, passwd: "root:x:0:0::/:/bin/sh\n", group: "root:x:0:\n")
        #expect(clean.usable.available)
        #expect(clean.slots == 15258 && clean.start == 1_000_000 && clean.count == 1_000_000_000 && clean.source == "default")
        #expect(clean.usable.detail == "1000000:1000000000 (default): 15258 slots of 65536 ids")

        let users = UnprivilegedProbe.checkRange(range, passwd: "root:x:0:0::/:/bin/sh\nbob:x:1000005:1000005::/:/bin/sh\n",
                                                 group: "bob:x:1000005:\n")
        #expect(!users.usable.available)
        #expect(users.usable.detail.contains("users bob (1000005) and groups bob (1000005)"), "\(users.usable.detail)")
        let groups = UnprivilegedProbe.checkRange(range, passwd: "", group: "big:x:1500000:\n")
        #expect(!groups.usable.available && groups.usable.detail.contains("groups big (1500000)"))
    }

    @Test func fileSystemTypeComesFromTheDevicesMountinfoLine() {
        let mountinfo = """
            22 27 0:21 / /proc rw,relatime - proc proc rw
            27 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
            30 27 0:40 / /srv rw,relatime shared:7 master:3 - xfs /dev/vdb1 rw
            31 27 259:65539 / /big rw - btrfs /dev/nvme0n1p3 rw
            """
        // makedev(254, 0), makedev(0, 40), makedev(259, 65539) as glibc encodes them.
        #expect(UnprivilegedProbe.fileSystemType(device: 254 << 8, mountinfo: mountinfo) == "ext4")
        #expect(UnprivilegedProbe.fileSystemType(device: 40, mountinfo: mountinfo) == "xfs")
        let big: UInt64 = (259 << 8) | (65539 & 0xff) | ((65539 & ~0xff) << 12)
        #expect(UnprivilegedProbe.fileSystemType(device: big, mountinfo: mountinfo) == "btrfs")
        #expect(UnprivilegedProbe.fileSystemType(device: 7 << 8, mountinfo: mountinfo) == nil)
    }

    @Test func theSysctlDecidesLazyMoves() {
        #expect(UnprivilegedProbe.userfaultfd(sysctl: "1").available)
        let off = UnprivilegedProbe.userfaultfd(sysctl: "0")
        #expect(!off.available && off.detail.contains("stop-and-copy") && off.detail.contains("make setup"))
        #expect(!UnprivilegedProbe.userfaultfd(sysctl: nil).available)
    }

    /// Before the daemon made images/, its file system is the nearest existing ancestor's.
    @Test func theProbedDirectoryIsTheNearestExistingOne() throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("gw-unpriv-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: state) }
        #expect(UnprivilegedProbe.imagesFileSystemDirectory(stateDirectory: state.path + "/a/b") == state.deletingLastPathComponent().path)
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        #expect(UnprivilegedProbe.imagesFileSystemDirectory(stateDirectory: state.path) == state.path)
        try FileManager.default.createDirectory(at: state.appendingPathComponent("images"), withIntermediateDirectories: true)
        #expect(UnprivilegedProbe.imagesFileSystemDirectory(stateDirectory: state.path) == state.path + "/images")
    }
}
