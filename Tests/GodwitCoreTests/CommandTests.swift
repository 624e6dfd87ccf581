import Testing
@testable import GodwitCore

@Suite struct CommandTests {
    @Test func capturesOutputAndStatus() throws {
        let result = try Command.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        #expect(result.status == 3)
        #expect(result.stdout == "out\n")
        #expect(result.stderr == "err\n")
        #expect(result.lastErrorLine == "err")
    }

    @Test func passesInput() throws {
        let result = try Command.run(["cat"], input: "hello")
        #expect(result.stdout == "hello")
    }

    @Test func checkNamesTheCommandAndItsError() {
        do {
            try Command.check(["sh", "-c", "echo boom >&2; exit 1"], hint: "do this")
            Issue.record("expected a failure")
        } catch let error as GodwitError {
            #expect(error.description.contains("boom"))
            #expect(error.description.contains("exit 1"))
            #expect(error.hint == "do this")
        } catch { Issue.record("unexpected \(error)") }
    }

    @Test func missingProgramSaysWhatToDo() {
        #expect(throws: GodwitError.self) { try Command.run(["godwit-no-such-program"]) }
    }

    @Test func largeOutputOnBothPipesDoesNotDeadlock() throws {
        let result = try Command.run(["sh", "-c", "head -c 300000 /dev/zero | tr '\\0' a; head -c 300000 /dev/zero | tr '\\0' b >&2"])
        #expect(result.stdout.count == 300000)
        #expect(result.stderr.count == 300000)
    }
}

@Suite struct ErrorAndTableTests {
    @Test func errorCarriesContextInOrder() {
        let error = GodwitError("restore failed", hint: "see the log").with("host", "h2").with("phase", "restore")
        #expect(error.description == "restore failed (host: h2, phase: restore)\nhint: see the log")
    }

    @Test func tableAlignsColumns() {
        var table = TextTable(header: ["a", "long header"])
        table.add(["xyz", "1"])
        #expect(table.render() == "a    long header\n---  -----------\nxyz  1")
        #expect(table.markdown() == "| a | long header |\n|---|---|\n| xyz | 1 |")
    }
}
