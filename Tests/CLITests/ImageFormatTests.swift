import API
import Foundation
import GodwitCore
import Testing

/// LXD image formats, export and `image list`'s columns, through the real CLI and godwitd
/// (fake driver: images are real either way).
@Suite(.serialized) struct ImageFormatTests {
    func images(_ dir: String) throws -> [ImageInfo] {
        let json = try godwit(["image", "list", "--format", "json"], dir: dir)
        return try APICoding.decoder().decode([ImageInfo].self, from: Data(json.stdout.utf8))
    }

    func rootfs(_ state: StateDir, _ image: ImageInfo) -> URL {
        state.url.appendingPathComponent("images/\(image.fingerprint)/rootfs")
    }

    /// Every path with its type, mode and size: "the same files".
    func manifest(_ rootfs: URL) throws -> [String] {
        // Directories without sizes: ext4 sizes a directory by its history, not its entries.
        try Command.check(["find", rootfs.path, "-mindepth", "1", "(", "-type", "d", "-printf", "%P %y %m\n", ")",
                           "-o", "-printf", "%P %y %m %s\n"]).stdout
            .split(separator: "\n").map(String.init).sorted()
    }

    /// POSTs JSON to the daemon and returns the HTTP status: 400 must come before any
    /// operation exists.
    func post(_ daemon: DaemonProcess, _ path: String, _ json: String) throws -> String {
        try Command.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket", daemon.socket,
                         "-X", "POST", "-H", "Content-Type: application/json", "-d", json, "http://godwit" + path]).stdout
    }

    @Test func exportedBusyboxImportsBackWithTheSameFilesAndColumns() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path
        let out = state.url.appendingPathComponent("busybox.tar.gz").path
        let export = try godwit(["image", "export", "busybox", out], dir: dir)
        #expect(export.status == 0, "\(export.stderr)\n\(daemon.logText)")
        let listing = try Command.check(["tar", "-tzf", out]).stdout.split(separator: "\n")
        #expect(listing.contains("metadata.yaml") && listing.contains("rootfs/bin/busybox"), "\(listing.prefix(5))")
        let metadata = try Command.check(["tar", "-xzOf", out, "metadata.yaml"]).stdout
        for line in ["architecture: x86_64", "creation_date: ", "os: busybox", "description: "] {
            #expect(metadata.contains(line), "\(metadata)")
        }

        let imported = try godwit(["image", "import", out, "--alias", "bb2"], dir: dir)
        #expect(imported.status == 0, "\(imported.stderr)")
        let all = try images(dir)
        let original = try #require(all.first { $0.alias == "busybox" })
        let copy = try #require(all.first { $0.alias == "bb2" })
        #expect(copy.os == "busybox" && copy.architecture == "amd64" && copy.release == original.release && !copy.release.isEmpty,
                "\(copy)")
        #expect(try manifest(rootfs(state, copy)) == manifest(rootfs(state, original)))

        let table = try godwit(["image", "list"], dir: dir).stdout
        #expect(table.contains("OS") && table.contains("RELEASE") && table.contains("ARCHITECTURE"), "\(table)")
        let row = table.split(separator: "\n").first { $0.hasPrefix("bb2 ") }.map(String.init) ?? ""
        #expect(row.contains("busybox") && row.contains("amd64"), "\(table)")

        // An existing file is not overwritten; an unknown suffix is refused up front.
        let again = try godwit(["image", "export", "busybox", out], dir: dir)
        #expect(again.status != 0 && again.stderr.contains("already exists"), "\(again.stderr)")
        #expect(try post(daemon, "/1.0/images/busybox/export", #"{"path":"/tmp/x.rar"}"#) == "400")
    }

    /// A unified image with "./" names and zstd, and a split one (xz), each made the way LXD
    /// publishes them: metadata.yaml (with templates) beside rootfs/.
    @Test func lxdUnifiedAndSplitImagesImport() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path
        let plain = state.url.appendingPathComponent("bb.tar.gz").path
        #expect(try godwit(["image", "export", "busybox", plain], dir: dir).status == 0)
        let busybox = try #require(try images(dir).first { $0.alias == "busybox" })

        let lxd = state.url.appendingPathComponent("lxd")
        try FileManager.default.createDirectory(at: lxd.appendingPathComponent("templates"), withIntermediateDirectories: true)
        try Data("{{ container.name }}\n".utf8).write(to: lxd.appendingPathComponent("templates/hostname.tpl"))
        try Data("""
            architecture: x86_64
            creation_date: 1700000000
            properties:
              architecture: x86_64
              description: Test OS r1 amd64
              os: TestOS
              release: r1
              serial: "20231120_05:24"
            templates:
              /etc/hostname:
                when:
                - create
                - copy
                template: hostname.tpl

            """.utf8).write(to: lxd.appendingPathComponent("metadata.yaml"))
        try Command.check(["cp", "-a", rootfs(state, busybox).path, lxd.appendingPathComponent("rootfs").path])
        let unified = state.url.appendingPathComponent("unified.tar.zst").path
        try Command.check(["tar", "-C", lxd.path, "--zstd", "-cf", unified, "."])
        let u = try godwit(["image", "import", unified, "--alias", "unified"], dir: dir)
        #expect(u.status == 0, "\(u.stderr)\n\(daemon.logText)")

        let meta = state.url.appendingPathComponent("meta.tar.xz").path
        let root = state.url.appendingPathComponent("rootfs.tar.xz").path
        try Command.check(["tar", "-C", lxd.path, "-cJf", meta, "metadata.yaml", "templates"])
        try Command.check(["tar", "-C", lxd.appendingPathComponent("rootfs").path, "-cJf", root, "."])
        let s = try godwit(["image", "import", meta, root, "--alias", "split"], dir: dir)
        #expect(s.status == 0, "\(s.stderr)\n\(daemon.logText)")

        let all = try images(dir)
        for alias in ["unified", "split"] {
            let image = try #require(all.first { $0.alias == alias })
            #expect(image.os == "testos" && image.release == "r1" && image.architecture == "amd64", "\(image)")
            #expect(image.description == "Test OS r1 amd64")
            #expect(try manifest(rootfs(state, image)) == manifest(rootfs(state, busybox)))
            let templates = state.url.appendingPathComponent("images/\(image.fingerprint)/templates/hostname.tpl")
            #expect(FileManager.default.fileExists(atPath: templates.path), "\(alias)")
        }
        // The exported LXD image keeps its templates.
        let back = state.url.appendingPathComponent("back.tar").path
        #expect(try godwit(["image", "export", "split", back], dir: dir).status == 0)
        let backMeta = try Command.check(["tar", "-xOf", back, "metadata.yaml"]).stdout
        #expect(backMeta.contains("template: hostname.tpl") && backMeta.contains("os: testos"), "\(backMeta)")
        #expect(try Command.check(["tar", "-tf", back]).stdout.contains("templates/hostname.tpl"))

        // Half a split image, or the halves swapped: clear errors, nothing stored.
        let half = try godwit(["image", "import", meta, "--alias", "half"], dir: dir)
        #expect(half.status != 0 && half.stderr.contains("no rootfs"), "\(half.stderr)")
        let swapped = try godwit(["image", "import", root, meta, "--alias", "swapped"], dir: dir)
        #expect(swapped.status != 0 && swapped.stderr.contains("metadata"), "\(swapped.stderr)")
        // A squashfs rootfs needs unsquashfs; without it the request is refused with a hint.
        let squash = state.url.appendingPathComponent("fake.squashfs").path
        try Data("hsqs".utf8 + Data(count: 1000)).write(to: URL(fileURLWithPath: squash))
        if Command.which("unsquashfs") == nil {
            #expect(try post(daemon, "/1.0/images", #"{"tarball":"\#(meta)","rootfs":"\#(squash)","alias":"sq"}"#) == "400")
            let sq = try godwit(["image", "import", meta, squash, "--alias", "sq"], dir: dir)
            #expect(sq.stderr.contains("unsquashfs is not installed"), "\(sq.stderr)")
        }
        #expect(Set(try images(dir).map(\.alias)) == ["busybox", "unified", "split"])
    }

    @Test func badInputIsA400AndStoresNothing() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path
        let junk = state.url.appendingPathComponent("junk.tar.gz").path
        try Data("this is not a tarball\n".utf8).write(to: URL(fileURLWithPath: junk))
        let gzJunk = state.url.appendingPathComponent("junk2.tar.gz").path
        try Command.check(["sh", "-c", "echo not a tar | gzip > \"$1\"", "sh", gzJunk])

        for (path, body) in [
            ("/1.0/images", #"{"tarball":"\#(junk)","alias":"junk"}"#),
            ("/1.0/images", #"{"tarball":"\#(gzJunk)","alias":"junk"}"#),
            ("/1.0/images", #"{"tarball":"relative.tar","alias":"junk"}"#),
            ("/1.0/images/build", #"{"distribution":"debian","release":"potato","include":[],"alias":"d","refresh":false}"#),
            ("/1.0/images/build", #"{"distribution":"debian","release":"bookworm","include":["Bad_Name"],"alias":"d","refresh":false}"#),
            ("/1.0/images/build", #"{"distribution":"debian","release":"bookworm","include":["curl; rm -rf /"],"alias":"d","refresh":false}"#),
            ("/1.0/images/build", #"{"distribution":"debian","release":"bookworm","include":["-x"],"alias":"d","refresh":false}"#),
            ("/1.0/images/build", #"{"distribution":"gentoo","release":"bookworm","include":[],"alias":"d","refresh":false}"#),
            ("/1.0/images/build", #"{"distribution":"debian","release":"bookworm","alias":"d"}"#),
        ] {
            #expect(try post(daemon, path, body) == "400", "\(body)")
        }
        let notTar = try godwit(["image", "import", junk, "--alias", "junk"], dir: dir)
        #expect(notTar.status != 0 && notTar.stderr.contains("is not a tar archive"), "\(notTar.stderr)")
        let release = try godwit(["image", "build", "debian", "--release", "potato", "--alias", "d"], dir: dir)
        #expect(release.status != 0 && release.stderr.contains("unknown Debian release 'potato'"), "\(release.stderr)")
        #expect(release.stderr.contains("bookworm"))
        let package = try godwit(["image", "build", "debian", "--include", "curl,Bad_Name", "--alias", "d"], dir: dir)
        #expect(package.status != 0 && package.stderr.contains("'Bad_Name' is not a Debian package name"), "\(package.stderr)")

        #expect(try images(dir).isEmpty)
        let left = (try? FileManager.default.contentsOfDirectory(atPath: state.url.appendingPathComponent("images").path)) ?? []
        #expect(left.isEmpty, "\(left)")
        #expect(try godwit(["operation", "list", "--format", "json"], dir: dir).stdout.contains("Importing") == false)
    }
}
