import API
import Foundation
import GodwitCore
import Testing

/// `godwit image build debian`: mmdebstrap on a fresh machine (a few minutes, once), the
/// host-wide cache afterwards.
@Suite(.serialized) struct DebianImageTests {
    @Test func theProjectRecipeBuildsOnceAndThenComesFromTheCache() throws {
        let state = try StateDir()
        let daemon = try DaemonProcess(state: state)
        defer { daemon.stop() }
        let dir = state.path

        let image = try DebianImage.ensure(dir: dir)
        #expect(image.os == "debian" && image.release == "bookworm" && image.architecture == "amd64", "\(image)")
        #expect(image.description.contains("nginx-light"), "\(image.description)")
        let rootfs = state.url.appendingPathComponent("images/\(image.fingerprint)/rootfs")
        // systemd is the init, and the files a container needs are there.
        let initLink = try Command.check(["chroot", rootfs.path, "readlink", "-f", "/sbin/init"]).stdout
        #expect(initLink.contains("systemd"), "\(initLink)")
        for path in ["etc/hosts", "usr/sbin/nginx", "usr/bin/curl", "etc/os-release"] {
            #expect(FileManager.default.fileExists(atPath: rootfs.appendingPathComponent(path).path), "\(path)")
        }
        #expect(try String(contentsOf: rootfs.appendingPathComponent("etc/hosts"), encoding: .utf8).contains("localhost"))

        // The same recipe again (packages in another order, one twice): from the cache, in
        // seconds, same fingerprint (sha256 of the same tarball).
        let started = Date()
        let again = try godwit(["image", "build", "debian", "--include", "curl,procps,iproute2,dbus,postgresql,nginx-light,curl",
                                "--alias", "debian2"], dir: dir)
        #expect(again.status == 0, "\(again.stderr)")
        #expect(Date().timeIntervalSince(started) < 60)
        let listed = try APICoding.decoder().decode([ImageInfo].self,
                                                    from: Data(try godwit(["image", "list", "--format", "json"], dir: dir).stdout.utf8))
        let copy = try #require(listed.first { $0.alias == "debian2" })
        #expect(copy.fingerprint == image.fingerprint)
        let duplicate = try godwit(DebianImage.buildArguments, dir: dir)
        #expect(duplicate.status != 0 && duplicate.stderr.contains("image alias 'debian' already exists"), "\(duplicate.stderr)")
    }
}
