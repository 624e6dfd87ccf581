import Foundation
import GodwitCore
import Testing
@testable import Checkpoint

/// The cgroup tree file crosses hosts: what a peer may put in it is bounded and checked
/// before any directory is made from it.
@Suite struct CgroupTreeTests {
    @Test func aTreeSurvivesEncodingAndBadPathsAreRefused() throws {
        let good = #"{"unified":["system.slice","system.slice/nginx.service"],"name=systemd":["init.scope"]}"#
        let tree = try CgroupTree.decode(Data(good.utf8))
        #expect(tree["unified"] == ["system.slice", "system.slice/nginx.service"])
        for bad in [#"{"unified":["../escape"]}"#, #"{"unified":["/abs"]}"#, #"{"unified":["a//b"]}"#,
                    #"{"unified":["a/./b"]}"#, #"{"unified":[""]}"#, #"{"a/b":["x"]}"#, #"{"":["x"]}"#,
                    #"["not","a","tree"]"#, "not json"] {
            #expect(throws: GodwitError.self, "accepted \(bad)") { try CgroupTree.decode(Data(bad.utf8)) }
        }
        let many = "{\"unified\":[" + (0...CgroupTree.maxPaths).map { "\"c\($0)\"" }.joined(separator: ",") + "]}"
        #expect(throws: GodwitError.self) { try CgroupTree.decode(Data(many.utf8)) }
    }

    @Test func recordAndRecreateGiveTheSameTree() throws {
        // A directory tree stands in for a hierarchy: record and recreate only walk and mkdir.
        let root = NSTemporaryDirectory() + "gw-cgtree-" + UUID().uuidString.prefix(8)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let layout = CgroupLayout(v1: [:], unified: root + "/src")
        let source = Cgroup(path: "lab/web", layout: layout)
        for dir in ["system.slice/system-getty.slice", "system.slice/nginx.service", "init.scope"] {
            try FileManager.default.createDirectory(atPath: root + "/src/lab/web/" + dir, withIntermediateDirectories: true)
        }
        let images = root + "/images"
        try FileManager.default.createDirectory(atPath: images, withIntermediateDirectories: true)
        try CgroupTree.record(source, into: images)
        let target = Cgroup(path: "other/web", layout: CgroupLayout(v1: [:], unified: root + "/dst"))
        try FileManager.default.createDirectory(atPath: root + "/dst/other/web", withIntermediateDirectories: true)
        try CgroupTree.recreate(below: target, from: images)
        #expect(Cgroup.subdirectories(of: root + "/dst/other/web") == Cgroup.subdirectories(of: root + "/src/lab/web"))
        #expect(FileManager.default.fileExists(atPath: root + "/dst/other/web/system.slice/system-getty.slice"))
    }

    @Test func everyDumpLetsCRIURecreateRamfs() {
        let criu = CRIU(binary: CRIUBinary(path: "/bin/false", source: .setting))
        let args = criu.dumpArguments(DumpOptions(pid: 1, imagesDirectory: "/tmp/i")).joined(separator: " ")
        #expect(args.contains("--enable-fs ramfs"))
    }
}
