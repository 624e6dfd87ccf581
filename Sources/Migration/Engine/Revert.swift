/// Rollback as a list: each step that creates something registers how to undo it; a failure
/// runs the undos newest first, success disarms them (the idea of Incus's shared/revert).
/// The order the steps register in is the order that keeps the never-two-copies rule: the
/// undo registered last (for the destination's copy) runs before the one that resumes the
/// source.
///
/// Concurrency: a value owned by one task (the source engine's `run`); the undos are
/// Sendable because they run after that task hands the list over.
public struct RevertList: Sendable {
    private var undos: [(name: String, undo: @Sendable () async -> Void)] = []

    public init() {}

    public mutating func add(_ name: String, _ undo: @escaping @Sendable () async -> Void) { undos.append((name, undo)) }

    /// The names of the registered steps, newest first: the order `run` undoes them in.
    public var pending: [String] { undos.reversed().map(\.name) }

    /// Undoes every registered step, newest first, then forgets them.
    public mutating func run() async {
        let steps = undos
        undos = []
        for step in steps.reversed() { await step.undo() }
    }

    /// Success: nothing is undone.
    public mutating func disarm() { undos = [] }
}
