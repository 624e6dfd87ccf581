import Foundation
import GodwitCore
import Lab
import Testing

/// The fault matrix's rules, without a lab: what applies where, which mode each phase
/// needs, and when a cell passes.
@Suite struct FaultMatrixModelTests {
    @Test func everyPhaseRunsInAModeThatHasIt() {
        #expect(FaultPhase.preCopyRound1.mode == .preCopy && FaultPhase.preCopyRound2.mode == .preCopy)
        #expect(FaultPhase.pageTransfer.mode.restoresLazily)
        #expect(FaultPhase.pageTransfer.mayLose)
        #expect(FaultPhase.allCases.filter(\.mayLose) == [.pageTransfer], "only after a lazy commit may a container be lost")
    }

    @Test func cellsThatCantApplySayWhy() {
        #expect(FaultCell(.negotiation, .sourceCRIU).notApplicable != nil)
        #expect(FaultCell(.imageTransfer, .destinationCRIU).notApplicable != nil)
        #expect(FaultCell(.negotiation, .diskFull).notApplicable != nil)
        #expect(FaultCell(.checkpoint, .sourceCRIU).criuFailure == .wrapperFails(verb: "dump"))
        #expect(FaultCell(.restore, .destinationCRIU).criuFailure == .wrapperFails(verb: "restore"))
        #expect(FaultCell(.pageTransfer, .destinationCRIU).criuFailure == .killRunning)
        let injected = FaultPhase.allCases.flatMap { p in FaultKind.allCases.map { FaultCell(p, $0) } }.filter { $0.notApplicable == nil }
        #expect(injected.count == 61)
    }

    @Test func theVerdict() {
        var rolledBack = FaultResult(cell: FaultCell(.restore, .linkDown), outcome: .rolledBack)
        rolledBack.runningOn = ["h1"]
        rolledBack.memory = "pass"
        rolledBack.moveFailed = true
        #expect(rolledBack.passed == false, "a failure must name its phase")
        rolledBack.reportedPhase = "memory + restore"
        #expect(rolledBack.passed == true)
        rolledBack.memory = "fail"
        #expect(rolledBack.passed == false, "memory that doesn't verify is never ok")

        var lost = FaultResult(cell: FaultCell(.commit, .destinationKill), outcome: .lost)
        lost.reportedLost = true
        #expect(lost.passed == false, "stop-and-copy may not lose the container")
        lost.cell = FaultCell(.pageTransfer, .destinationKill)
        #expect(lost.passed == true)
        lost.reportedLost = false
        #expect(lost.passed == false, "a loss must be reported")

        var two = FaultResult(cell: FaultCell(.commit, .linkDown), outcome: .twoCopies)
        two.runningOn = ["h1", "h2"]
        #expect(two.passed == false)
        #expect(FaultResult(cell: FaultCell(.negotiation, .sourceCRIU), outcome: .notApplicable).passed == nil)
    }

    @Test func csvQuotesAndTheTableShortensNotes() {
        var r = FaultResult(cell: FaultCell(.restore, .linkDown), outcome: .rolledBack,
                            note: "move: failed, badly (url: https://x, host: h1, phase: restore (inner)) end")
        r.runningOn = ["h1"]
        let csv = FaultOutput.csv([r])
        #expect(csv.contains("\"move: failed, badly (url:"), "\(csv)")
        #expect(csv.split(separator: "\n").count == 2)
        let table = FaultOutput.markdown([r])
        #expect(table.contains("move: failed, badly end"), "\(table)")
        #expect(FaultOutput.grid([r]).contains("rolled-back FAIL"))
    }
}
