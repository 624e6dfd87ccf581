import CGodwit
import Foundation
import GodwitCore
import Testing
@testable import Memory

@Suite struct InjectionTests {
    @Test func injectedGetpidAndGettidReturnTheTargets() throws {
        let target = try ProbeTarget(pages: 2)
        defer { target.terminate() }
        let (pid, tid) = try PtraceSession.with(tid: target.pid) { s in
            (try s.syscall(Int(CGW_NR_getpid)), try s.syscall(Int(CGW_NR_gettid)))
        }
        #expect(pid == Int(target.pid))
        #expect(tid == Int(target.pid))
        #expect(try target.ping() == 1)
    }

    /// A failing injected syscall reports its -errno; the injection itself succeeds.
    @Test func failingSyscallReturnsNegativeErrno() throws {
        let target = try ProbeTarget(pages: 2)
        defer { target.terminate() }
        let result = try PtraceSession.with(tid: target.pid) { try $0.syscall(Int(CGW_NR_close), 12345) }
        #expect(result == -Int(EBADF))
        try target.ping()
    }

    /// The child sits in read(2) on its command pipe. Interrupting it there leaves
    /// -ERESTARTSYS in rax; after several injections and detach, the read must restart
    /// and deliver exactly the commands sent, even one that arrived while it was stopped.
    /// If the restart were botched, read() would return -512 and the child would exit.
    @Test func blockedReadRestartsAfterInjection() throws {
        let target = try ProbeTarget(pages: 4)
        defer { target.terminate() }
        try target.ping()
        usleep(2000)  // let it block in read() again
        try PtraceSession.with(tid: target.pid) { s in
            for _ in 0..<3 { #expect(try s.syscall(Int(CGW_NR_getpid)) == Int(target.pid)) }
            try target.send(cgw_probe_cmd_write(2))  // arrives while the child is stopped
            #expect(try s.syscall(Int(CGW_NR_getpid)) == Int(target.pid))
        }
        #expect(try target.readAck() == 1)
        #expect(try target.ping() == 3, "exactly three commands seen: ping, write, ping")
        let bytes = try ProcessMemoryReader(pid: target.pid).read(at: target.address(ofPage: 2), count: 1)
        #expect(bytes == [1])
    }

    /// The same with nothing arriving: after detach the child is still blocked in read()
    /// (not woken with garbage) and serves the next command.
    @Test func idleTargetKeepsWaitingAfterInjection() throws {
        let target = try ProbeTarget(pages: 1)
        defer { target.terminate() }
        usleep(2000)
        _ = try PtraceSession.with(tid: target.pid) { try $0.syscall(Int(CGW_NR_getpid)) }
        usleep(5000)
        #expect(target.isRunning)
        #expect(try target.ping() == 1)
    }

    /// A signal that arrives while the child is stopped must be delivered after we let
    /// go (not swallowed, not run on top of the injected registers), and its SA_RESTART
    /// handler must not break the interrupted read().
    @Test func signalDuringInjectionIsDeliveredAfterwards() throws {
        let target = try ProbeTarget(pages: 1)
        defer { target.terminate() }
        usleep(2000)
        try PtraceSession.with(tid: target.pid) { (s: PtraceSession) throws in
            #expect(kill(target.pid, SIGUSR1) == 0)
            #expect(try s.syscall(Int(CGW_NR_getpid)) == Int(target.pid))
            #expect(kill(target.pid, SIGUSR1) == 0)  // standard signals coalesce: one pending
            #expect(try s.syscall(Int(CGW_NR_gettid)) == Int(target.pid))
        }
        #expect(try target.signalsReceived() >= 1)
        #expect(try target.ping() == 2)
        try target.write(page: 0)
    }

    @Test func remoteUserfaultfdLeavesNoDescriptorInTarget() throws {
        let target = try ProbeTarget(pages: 2)
        defer { target.terminate() }
        let before = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(target.pid)/fd").sorted()
        let uffd = try RemoteUserfaultfd(pid: target.pid)
        defer { uffd.close() }
        let after = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(target.pid)/fd").sorted()
        #expect(before == after)
        #expect(uffd.fd >= 0)
        #expect(uffd.enabledFeatures.contains([.wpAsync, .wpUnpopulated]))
        #expect(uffd.targetStoppedNanos > 0 && uffd.targetStoppedNanos < 100_000_000)
        let link = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(uffd.fd)")
        #expect(link.contains("userfaultfd"))
        try target.ping()
    }

    @Test func pidfdTakesTheChildsDescriptor() throws {
        let target = try ProbeTarget(pages: 1)
        defer { target.terminate() }
        let fd = try ProcessHandle(pid: target.pid).takeDescriptor(target.childCommandFD)
        defer { close(fd) }
        // Writing a command through the copied read end's pipe is impossible, but the
        // descriptor must be the same pipe as ours: compare inodes.
        var a = stat(), b = stat()
        #expect(fstat(fd, &a) == 0)
        #expect(fstat(target.ackFD, &b) == 0)
        #expect(a.st_ino != b.st_ino, "command pipe, not the ack pipe")
        #expect((a.st_mode & S_IFMT) == S_IFIFO)
    }

    @Test func attachingToAGoneProcessThrows() throws {
        let target = try ProbeTarget(pages: 1)
        let pid = target.pid
        target.terminate()
        #expect(throws: GodwitError.self) { try PtraceSession.with(tid: pid) { _ in } }
        #expect(throws: GodwitError.self) { try RemoteUserfaultfd(pid: pid) }
        #expect(throws: GodwitError.self) { try PagemapScanner(pid: pid) }
    }

    @Test func probeTargetDiesWithItsPipeAndIsReaped() throws {
        let target = try ProbeTarget(pages: 1)
        let pid = target.pid
        target.terminate()
        #expect(kill(pid, 0) == -1 && errno == ESRCH, "killed and reaped, not a zombie")
        #expect(throws: GodwitError.self) { try target.ping() }
    }
}

@Suite struct MapsParsingTests {
    @Test func parsesPathsWithSpacesAndAnonymousMappings() {
        let text = """
        55d0c0a00000-55d0c0a21000 rw-p 00000000 00:00 0                          [heap]
        7f0000000000-7f0000001000 rw-p 00001000 fd:01 1234                       /tmp/with space/lib.so
        7f0000001000-7f0000002000 rw-s 00000000 00:01 99                         /dev/zero (deleted)
        7f0000002000-7f0000003000 rw-p 00000000 00:00 0
        7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
        ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
        garbage
        """
        let maps = ProcessMaps.parse(text)
        #expect(maps.count == 6)
        #expect(maps[1].path == "/tmp/with space/lib.so")
        #expect(maps[1].offset == 0x1000 && maps[1].inode == 1234)
        #expect(maps[3].path.isEmpty)
        #expect(maps.filter(\.isWritablePrivate).map(\.start) == [0x55d0c0a00000, 0x7f0000000000, 0x7f0000002000])
        #expect(maps[2].isShared && !maps[2].isWritablePrivate)
        #expect(maps[4].isKernelSpecial && maps[4].isExecutable)
    }
}
