import Foundation
@testable import Migration
import Testing

/// GODWIT_FAULT's syntax: what the fault matrix writes is what the engine reads, and
/// anything else is no fault at all (a typo must not pause a real move).
@Suite struct SourceHooksTests {
    @Test func pausesAndFailuresAtEveryPoint() {
        for point in SourceHooks.Point.allCases where point != .preCopyRound {
            let pause = SourceHooks(fault: "pause:\(point.rawValue):3")
            #expect(pause.pauseAt == point && pause.pauseSeconds == 3 && pause.failAt == nil)
            #expect(SourceHooks(fault: "fail:\(point.rawValue)").failAt == point)
        }
    }

    @Test func aPreCopyRoundCarriesItsNumber() {
        let second = SourceHooks(fault: "pause:preCopyRound2:1.5\n")
        #expect(second.pauseAt == .preCopyRound && second.round == 2 && second.pauseSeconds == 1.5)
        #expect(SourceHooks(fault: "fail:preCopyRound").round == 1)
        #expect(throws: (any Error).self) { try SourceHooks(fault: "fail:preCopyRound3").reachRound(3) }
        #expect(throws: Never.self) { try SourceHooks(fault: "fail:preCopyRound3").reachRound(2) }
    }

    @Test(arguments: ["", "pause:frozen", "pause:frozen:-1", "pause:frozen:inf", "fail:nowhere", "pause:preCopyRound0:1",
                      "pause:preCopyRoundx:1", "stop:frozen"])
    func anythingElseIsNoFault(_ text: String) {
        #expect(!SourceHooks(fault: text).isSet, "\(text)")
    }
}
