import Foundation

/// A bounded timeline of the proxy's first requests, answers and marks (the commit, the
/// address announcement), written on `stop()` when `GODWIT_PROXY_TRACE` names a
/// directory. Why: a fault's wait is spread over lazy-pages, the proxy, the channel and
/// the source; only timestamps at the proxy say which queue it waited in (post-copy's
/// network gap was found this way). Off: one branch per event. Lives in the proxy's
/// `State`, so it is used under the proxy's lock only.
struct ProxyTrace {
    let directory: String?
    private var lines: [String] = []
    private var origin: UInt64?
    static let limit = 6000

    init(directory: String? = ProcessInfo.processInfo.environment["GODWIT_PROXY_TRACE"]) {
        self.directory = directory.flatMap { $0.isEmpty ? nil : $0 }
    }

    var enabled: Bool { directory != nil && lines.count < Self.limit }

    static func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

    func millis(_ t: UInt64) -> String {
        String(format: "%.1f", Double(t &- (origin ?? t)) / 1e6)
    }

    mutating func add(_ event: @autoclosure () -> String, at t: UInt64 = now()) {
        guard enabled else { return }
        if origin == nil { origin = t }
        lines.append(millis(t) + " " + event())
    }

    /// Writes the timeline (once); a failure only loses the diagnosis.
    mutating func write() {
        guard let directory, !lines.isEmpty else { return }
        let path = "\(directory)/proxy-trace-\(getpid())-\(Self.now()).txt"
        try? Data((lines.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: path))
        lines = []
    }
}

extension LazyPageProxy {
    /// Adds a named moment to the trace (the commit, the announcement), if tracing.
    public func mark(_ what: String) { state.withLock { $0.trace.add("mark \(what)") } }
}
