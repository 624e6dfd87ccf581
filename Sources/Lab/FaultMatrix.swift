import Foundation
import GodwitCore

// `godwit bench faults`: the fault matrix of issue 13. Phases of a move × faults; each cell
// moves a memtouch container h1 → h2, injects the fault while the source's engine pauses
// at the phase's fault point, recovers (links back, killed daemons restarted), and checks
// that exactly one copy runs (or none, reported lost, where post-copy's trade-off allows
// it), that its memory verifies, and that the failure names its phase. This file is the
// part without side effects: the matrix, what applies where, the verdict, CSV and table.
// The CLI (Sources/godwit/BenchFaults*.swift) drives the lab.

/// Where in a move the fault lands: a point of the source engine (`SourceHooks.Point`)
/// where it pauses, announces itself, and the harness acts.
public enum FaultPhase: String, CaseIterable, Codable, Sendable, Comparable {
    case negotiation
    case filesystemSync = "filesystem-sync"
    case preCopyRound1 = "pre-copy-1"
    case preCopyRound2 = "pre-copy-2"
    case checkpoint
    case imageTransfer = "image-transfer"
    case restore
    case commit
    case pageTransfer = "post-commit-pages"

    /// The mode that has this phase: rounds need pre-copy, pages after the commit post-copy.
    public var mode: MigrationStrategy {
        switch self {
        case .preCopyRound1, .preCopyRound2: .preCopy
        case .pageTransfer: .postCopy
        default: .stopAndCopy
        }
    }

    /// The source engine's fault point (GODWIT_FAULT's POINT).
    public var point: String {
        switch self {
        case .negotiation: "negotiation"
        case .filesystemSync: "transferring"
        case .preCopyRound1: "preCopyRound1"
        case .preCopyRound2: "preCopyRound2"
        case .checkpoint: "frozen"
        case .imageTransfer: "images"
        case .restore: "restoring"
        case .commit: "committing"
        case .pageTransfer: "pageTransfer"
        }
    }

    /// After the commit the source's tasks are dead: a post-copy container whose pages
    /// can't all arrive is lost by design (docs/migration.md), never run twice.
    public var mayLose: Bool { self == .pageTransfer }

    public static func < (a: FaultPhase, b: FaultPhase) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
}

public enum FaultKind: String, CaseIterable, Codable, Sendable, Comparable {
    case linkDown = "link-down"
    case linkFlap = "link-flap"
    case sourceKill = "src-kill"
    case destinationKill = "dst-kill"
    case sourceCRIU = "src-criu"
    case destinationCRIU = "dst-criu"
    case diskFull = "dst-disk-full"
    case clientKill = "client-kill"

    public var title: String {
        switch self {
        case .linkDown: "link down"
        case .linkFlap: "link flapping"
        case .sourceKill: "source daemon SIGKILL"
        case .destinationKill: "destination daemon SIGKILL"
        case .sourceCRIU: "CRIU failure on the source"
        case .destinationCRIU: "CRIU failure on the destination"
        case .diskFull: "destination disk full"
        case .clientKill: "`godwit move` client killed"
        }
    }

    public static func < (a: FaultKind, b: FaultKind) -> Bool { allCases.firstIndex(of: a)! < allCases.firstIndex(of: b)! }
}

/// How a CRIU failure is made: CRIU itself fails (a wrapper, for the one CRIU run that
/// starts in the phase), or the CRIU that is running then is SIGKILLed.
public enum CRIUFailure: Sendable, Equatable {
    case wrapperFails(verb: String)
    case killRunning
}

public struct FaultCell: Hashable, Codable, Sendable, Comparable {
    public var phase: FaultPhase
    public var fault: FaultKind
    public init(_ phase: FaultPhase, _ fault: FaultKind) { self.phase = phase; self.fault = fault }

    /// nil when the fault can be injected in this phase, else why not.
    public var notApplicable: String? {
        switch (fault, phase) {
        case (.sourceCRIU, .negotiation), (.sourceCRIU, .filesystemSync), (.sourceCRIU, .preCopyRound1),
             (.sourceCRIU, .preCopyRound2):
            return "no CRIU runs on the source before the checkpoint"
        case (.destinationCRIU, .negotiation), (.destinationCRIU, .filesystemSync), (.destinationCRIU, .preCopyRound1),
             (.destinationCRIU, .preCopyRound2), (.destinationCRIU, .checkpoint), (.destinationCRIU, .imageTransfer):
            return "no CRIU runs on the destination before the restore"
        case (.diskFull, .negotiation):
            return "the destination has written nothing of the move yet"
        default:
            return nil
        }
    }

    public var criuFailure: CRIUFailure? {
        switch (fault, phase) {
        case (.sourceCRIU, .checkpoint): .wrapperFails(verb: "dump")
        case (.destinationCRIU, .restore): .wrapperFails(verb: "restore")
        case (.sourceCRIU, _), (.destinationCRIU, _): .killRunning
        default: nil
        }
    }

    public var label: String { "\(phase.rawValue) × \(fault.rawValue)" }

    public static func < (a: FaultCell, b: FaultCell) -> Bool { (a.phase, a.fault) < (b.phase, b.fault) }
}

/// What one cell showed after the recovery.
public struct FaultResult: Codable, Sendable, Equatable {
    public enum Outcome: String, Codable, Sendable {
        /// Runs on the destination only.
        case moved
        /// Runs on the source only.
        case rolledBack = "rolled-back"
        /// Runs nowhere.
        case lost
        /// Runs on both hosts: never allowed.
        case twoCopies = "two-copies"
        case notApplicable = "n/a"
        /// The harness could not set the cell up or inject (not a verdict on Godwit).
        case notRun = "not-run"
    }

    public var cell: FaultCell
    public var outcome: Outcome
    /// Hosts running the container after the recovery.
    public var runningOn: [String] = []
    /// memtouch's verdict in the surviving copy: pass, fail, or nil (none survived).
    public var memory: String?
    /// Whether the move failed (non-zero client, failure record) or finished as moved.
    public var moveFailed: Bool?
    /// The phase the failure names (the error's "phase" or the record's), nil when none.
    public var reportedPhase: String?
    /// Whether a lost container was reported as lost (error, record or daemon log).
    public var reportedLost: Bool?
    public var note: String = ""
    public var seconds: Double = 0

    public init(cell: FaultCell, outcome: Outcome, note: String = "") {
        self.cell = cell; self.outcome = outcome; self.note = note
    }

    public var injected: Bool { outcome != .notApplicable && outcome != .notRun }
    public var survived: Bool { runningOn.count == 1 && memory == "pass" }

    /// The cell's requirement: exactly one copy whose memory verifies, or no copy reported
    /// lost where the phase allows it; a failed move names a phase.
    public var passed: Bool? {
        guard injected else { return nil }
        switch outcome {
        case .moved, .rolledBack:
            return survived && (moveFailed != true || reportedPhase != nil)
        case .lost:
            return cell.phase.mayLose && reportedLost == true
        case .twoCopies, .notApplicable, .notRun:
            return false
        }
    }

    public var verdict: String {
        switch passed {
        case true?: "ok"
        case false?: "FAIL"
        case nil: outcome.rawValue
        }
    }
}

/// CSV and Markdown of a matrix run.
public enum FaultOutput {
    public static func csv(_ results: [FaultResult]) -> String {
        var lines = ["phase,fault,mode,injected,outcome,running_on,survived,lost,memory,move_failed,reported_phase,verdict,seconds,why"]
        for r in results.sorted(by: { $0.cell < $1.cell }) {
            let fields: [String] = [
                r.cell.phase.rawValue, r.cell.fault.rawValue, r.cell.phase.mode.rawValue, r.injected ? "yes" : "no",
                r.outcome.rawValue, r.runningOn.joined(separator: "+"), r.injected ? (r.survived ? "yes" : "no") : "",
                r.outcome == .lost ? "yes" : (r.injected ? "no" : ""), r.memory ?? "",
                r.moveFailed.map { $0 ? "yes" : "no" } ?? "", r.reportedPhase ?? "", r.verdict,
                String(format: "%.0f", r.seconds), r.note,
            ]
            lines.append(fields.map(quote).joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    static func quote(_ field: String) -> String {
        guard field.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" }) else { return field }
        return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"").replacingOccurrences(of: "\n", with: " ") + "\""
    }

    /// The note without the error's context list (host, url, operation...: in the CSV),
    /// at most 200 characters: a table cell, not a log.
    static func brief(_ note: String) -> String {
        var text = note.replacingOccurrences(of: "|", with: "/").replacingOccurrences(of: "\n", with: " ")
        for marker in [" (url: ", " (errno: ", " (host: "] {
            while let range = text.range(of: marker) {
                // Drop up to the matching parenthesis.
                var depth = 0
                var end = range.lowerBound
                for index in text[range.lowerBound...].indices.dropFirst() {
                    let c = text[index]
                    if c == "(" { depth += 1 }
                    if c == ")" { depth -= 1; if depth == 0 { end = text.index(after: index); break } }
                }
                if end == range.lowerBound { end = text.endIndex }
                text.removeSubrange(range.lowerBound..<end)
            }
        }
        return text.count > 200 ? String(text.prefix(199)) + "…" : text
    }

    /// One row per phase, one column per fault: the overview.
    public static func grid(_ results: [FaultResult]) -> String {
        let phases = FaultPhase.allCases.filter { p in results.contains { $0.cell.phase == p } }
        let faults = FaultKind.allCases.filter { f in results.contains { $0.cell.fault == f } }
        var table = TextTable(header: ["phase (mode)"] + faults.map(\.rawValue))
        for phase in phases {
            table.add(["\(phase.rawValue) (\(phase.mode.rawValue))"] + faults.map { fault in
                guard let r = results.first(where: { $0.cell == FaultCell(phase, fault) }) else { return "" }
                switch r.outcome {
                case .notApplicable: return "n/a"
                case .notRun: return "not run"
                default: return "\(r.outcome.rawValue) \(r.verdict)"
                }
            })
        }
        return table.markdown()
    }

    /// Every cell: injected, survived, lost, why.
    public static func markdown(_ results: [FaultResult]) -> String {
        var table = TextTable(header: ["phase", "fault", "injected", "outcome", "survived", "lost", "memory", "phase named", "verdict", "why"])
        for r in results.sorted(by: { $0.cell < $1.cell }) {
            table.add([r.cell.phase.rawValue, r.cell.fault.rawValue, r.injected ? "yes" : "no", r.outcome.rawValue,
                       r.injected ? (r.survived ? "yes" : "no") : "–", r.outcome == .lost ? "yes" : (r.injected ? "no" : "–"),
                       r.memory ?? "–", r.moveFailed == true ? (r.reportedPhase ?? "none") : "–", r.verdict,
                       brief(r.note)])
        }
        return table.markdown()
    }
}
