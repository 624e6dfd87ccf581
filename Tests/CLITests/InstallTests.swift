import Foundation
import GodwitCore
import Testing

/// `make install` (scripts/install.sh, here with the debug binaries instead of a release
/// build, which would add minutes to the suite): the tree, the unit, the CRIU wrapper.
@Suite(.enabled(if: geteuid() == 0, "needs root"))
struct InstallTests {
    @Test func installProducesTheTreeAndAUnitThatVerifiesAndUninstallRemovesIt() throws {
        let destdir = "/tmp/gw-install-" + UUID().uuidString.prefix(8).lowercased()
        defer { try? FileManager.default.removeItem(atPath: destdir) }
        let binaries = (LabCLITests.godwit as NSString).deletingLastPathComponent
        var environment = ProcessInfo.processInfo.environment
        environment["DESTDIR"] = destdir
        environment["PREFIX"] = "/usr/local"
        environment["RELEASE_DIR"] = binaries
        let install = try Command.run(["bash", "scripts/install.sh", "install"], environment: environment)
        try #require(install.succeeded, "install: \(install.stderr)")
        let root = destdir + "/usr/local"
        for path in ["bin/godwit", "bin/godwitd", "bin/godwit-spawn", "lib/godwit/criu/bin/criu", "lib/systemd/system/godwitd.service",
                     "share/bash-completion/completions/godwit", "share/zsh/site-functions/_godwit",
                     "share/fish/vendor_completions.d/godwit.fish", "share/doc/godwit/two-hosts.md"] {
            #expect(FileManager.default.fileExists(atPath: root + "/" + path), "\(path) is missing")
        }
        #expect(access(root + "/bin/godwitd", X_OK) == 0)
        let unit = try #require(HostEnvironment.read(root + "/lib/systemd/system/godwitd.service"))
        #expect(unit.contains("ExecStart=/usr/local/bin/godwitd") && unit.contains("KillMode=process") && unit.contains("Restart=on-failure"),
                "\(unit)")
        // The wrapper names the final place of CRIU's private prefix, never the checkout.
        let wrapper = try #require(HostEnvironment.read(root + "/lib/godwit/criu/bin/criu"))
        #expect(!wrapper.contains(FileManager.default.currentDirectoryPath + "/.criu"), "\(wrapper)")
        let completion = try #require(HostEnvironment.read(root + "/share/bash-completion/completions/godwit"))
        #expect(completion.contains("init") && completion.contains("move"))
        // systemd-analyze checks the unit, with ExecStart pointed at the staged binary (its
        // final path doesn't exist on this machine).
        let staged = destdir + "/godwitd.service"
        try unit.replacingOccurrences(of: "/usr/local/bin/", with: root + "/bin/").write(toFile: staged, atomically: true, encoding: .utf8)
        let verify = try Command.run(["systemd-analyze", "verify", staged])
        #expect(verify.succeeded && verify.stderr.isEmpty, "systemd-analyze verify: \(verify.stderr)")

        let uninstall = try Command.run(["bash", "scripts/install.sh", "uninstall"], environment: environment)
        #expect(uninstall.succeeded, "uninstall: \(uninstall.stderr)")
        let left = (FileManager.default.enumerator(atPath: root)?.allObjects as? [String] ?? []).filter {
            var isDirectory: ObjCBool = false
            return FileManager.default.fileExists(atPath: root + "/" + $0, isDirectory: &isDirectory) && !isDirectory.boolValue
        }
        #expect(left.isEmpty, "left after uninstall: \(left)")
    }
}
