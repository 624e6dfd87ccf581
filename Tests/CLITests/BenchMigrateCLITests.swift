import Foundation
import GodwitCore
import Testing

/// `godwit bench migrate` checks its matrix before it creates anything (and before it needs
/// root): a bad stride, size, mode or count fails at once with what is allowed.
@Suite struct BenchMigrateCLITests {
    func bench(_ arguments: String...) throws -> CommandResult {
        let godwit = Built.path("godwit")
        try #require(FileManager.default.isExecutableFile(atPath: godwit), "build godwit first: \(godwit)")
        return try Command.run([godwit, "bench", "migrate"] + arguments)
    }

    @Test(arguments: [
        (["--strides", "3"], ["invalid stride '3'", "1,2,4,0"]),
        (["--strides", "1,,4"], ["empty entry in the stride list"]),
        (["--sizes", "0"], ["invalid size '0'", "MiB"]),
        (["--sizes", "lots"], ["invalid size 'lots'"]),
        (["--modes", "warp"], ["unknown mode 'warp'", "stop-and-copy", "criu-lazy"]),
        (["--modes", "auto"], ["unknown mode 'auto'", "auto picks"]),
        (["--repetitions", "0"], ["invalid repetition count 0"]),
        (["--bandwidth", "1gbt"], ["unknown unit"]),
        (["--quick", "--warm-seconds", "-1"], ["--warm-seconds"]),
    ])
    func badArgumentsFailWithWhatIsAllowed(arguments: [String], words: [String]) throws {
        let godwit = Built.path("godwit")
        try #require(FileManager.default.isExecutableFile(atPath: godwit), "build godwit first: \(godwit)")
        let result = try Command.run([godwit, "bench", "migrate"] + arguments)
        #expect(result.status != 0)
        for word in words {
            #expect(result.stderr.contains(word), "stderr lacks '\(word)': \(result.stderr)")
        }
    }

    @Test func helpNamesTheProfilesAndBaselines() throws {
        let result = try bench("--help")
        #expect(result.status == 0)
        for word in ["--quick", "--strides", "criu-page-server", "criu-lazy", "1 GiB"] {
            #expect(result.stdout.contains(word), "help lacks '\(word)'")
        }
    }
}
