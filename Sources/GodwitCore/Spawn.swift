import Foundation

/// posix_spawn with the default signal mask and dispositions: Foundation ignores SIGPIPE
/// and blocks signals in its threads, and a child must not inherit either, so that SIGPIPE
/// ends a writer whose reader went and SIGTERM or SIGKILL from a cleanup act as they should.
/// The caller prepares the file actions (stdio, descriptors to pass, what to close).
/// Returns posix_spawn's status (0: started) and the child's pid.
public func spawnWithDefaultSignals(_ executable: String, _ argv: [String],
                                    _ actions: inout posix_spawn_file_actions_t) -> (status: Int32, pid: pid_t) {
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var none = sigset_t(), all = sigset_t()
    sigemptyset(&none)
    sigfillset(&all)
    posix_spawnattr_setsigmask(&attributes, &none)
    posix_spawnattr_setsigdefault(&attributes, &all)
    posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
    var cArgs = argv.map { strdup($0) } + [nil]
    defer { for arg in cArgs { free(arg) } }
    var pid: pid_t = 0
    let status = posix_spawn(&pid, executable, &actions, &attributes, &cArgs, environ)
    return (status, pid)
}
