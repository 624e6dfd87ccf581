import CGodwit
import Foundation
import GodwitCore

/// A ptrace attachment to one thread of another process, used to run single syscalls in
/// it (the target's other threads keep running). Linux makes the attaching OS *thread* the
/// tracer, so the whole session must stay on one thread: use `PtraceSession.with`, which
/// attaches, runs the body synchronously and always detaches.
public final class PtraceSession {
    public let tid: pid_t
    private let tracerThread: pid_t
    private var syscallInstruction: UInt64
    public private(set) var isAttached = true
    /// Wall time from attach to detach (how long the target thread stood still).
    public private(set) var stoppedNanos: UInt64 = 0
    private let attachedAt: UInt64

    private init(tid: pid_t) throws {
        self.tid = tid
        tracerThread = cgw_gettid()
        // Found before attaching (the vDSO never moves), so the target isn't kept stopped
        // while we parse its maps.
        var insn: UInt64 = 0
        try checkCGW(cgw_find_syscall_insn(tid, &insn), "finding a syscall instruction in \(tid)'s vDSO",
                     hint: "the process is gone, or this needs root")
        syscallInstruction = insn
        attachedAt = monotonicNanos()
        try checkCGW(cgw_ptrace_attach(tid), "ptrace attach to \(tid)",
                     hint: "needs root (or CAP_SYS_PTRACE) and a target that nobody else traces")
    }

    /// Attaches to `tid`, runs `body`, detaches (also when `body` throws).
    public static func with<T>(tid: pid_t, _ body: (PtraceSession) throws -> T) throws -> T {
        let session = try PtraceSession(tid: tid)
        let result: T
        do {
            result = try body(session)
        } catch {
            try? session.detach()
            throw error
        }
        try session.detach()
        return result
    }

    /// Runs syscall `number` in the target thread and returns its raw result (negative
    /// errno when that syscall failed). Throws only when the injection itself failed.
    public func syscall(_ number: Int, _ args: Int...) throws -> Int {
        precondition(isAttached, "ptrace session already detached")
        precondition(cgw_gettid() == tracerThread, "ptrace session used from another thread than the one that attached")
        var a = args + Array(repeating: 0, count: max(0, 6 - args.count))
        a = Array(a.prefix(6))
        var result = 0
        try checkCGW(cgw_inject_syscall_at(tid, syscallInstruction, number, a[0], a[1], a[2], a[3], a[4], a[5], &result),
                     "injecting syscall \(number) into \(tid)")
        return result
    }

    public func detach() throws {
        guard isAttached else { return }
        isAttached = false
        stoppedNanos = monotonicNanos() - attachedAt
        try checkCGW(cgw_ptrace_detach(tid), "ptrace detach from \(tid)")
    }

    /// The thread to inject into: the main thread unless it already exited (a zombie
    /// leader never enters a ptrace stop, so attaching to it would hang).
    public static func injectableThread(of pid: pid_t) -> pid_t {
        func state(_ tid: String) -> Character? { HostEnvironment.threadState(pid: pid, tid: tid) }
        if let s = state(String(pid)), s != "Z", s != "X" { return pid }
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        for t in tasks.sorted() where state(t).map({ $0 != "Z" && $0 != "X" }) ?? false {
            if let tid = pid_t(t) { return tid }
        }
        return pid
    }
}

/// A pidfd: a handle on a process that can't be confused with a later one reusing the PID.
public final class ProcessHandle {
    public let pid: pid_t
    public let fd: Int32

    public init(pid: pid_t) throws {
        self.pid = pid
        fd = try checkCGW(cgw_pidfd_open(pid), "pidfd_open(\(pid))", hint: "the process is gone (or kernel < 5.3)")
    }

    deinit { Glibc.close(fd) }

    /// Duplicates the target's descriptor `remoteFD` into this process (close-on-exec).
    /// The caller owns the returned descriptor.
    public func takeDescriptor(_ remoteFD: Int32) throws -> Int32 {
        try checkCGW(cgw_pidfd_getfd(fd, remoteFD), "pidfd_getfd(\(pid), \(remoteFD))",
                     hint: "needs ptrace rights over the target (root) and kernel >= 5.6")
    }
}
